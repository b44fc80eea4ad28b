"""What `torch.compile` did during a training run, as a hook: graphs compiled, graph breaks, recompiles.

Read from TorchDynamo's own counters (`torch._dynamo.utils.counters`, which `torch._dynamo.explain` and
`TORCH_LOGS=graph_breaks,recompiles` report too): "unique_graphs" counts every graph handed to the backend,
"graph_break" every break met while tracing. The loop compiles in its warm-up, before the first optimizer
step; a graph compiled after that step is a recompile, which a training step at fixed shapes never needs.
"""

from __future__ import annotations

from torch._dynamo.utils import counters

from blueberry.core.events import RunResult, StepInfo
from blueberry.core.hooks import Hook
from blueberry.core.state import TrainState


def _snapshot() -> tuple[int, int]:
    """(graphs compiled, graph breaks met) in this process so far."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


class CompileWatch(Hook):
    """After a run: `graphs` and `graph_breaks` up to the end of the first optimizer step (the compile
    warm-up included), and `recompiles`, the graphs compiled after it. A whole-graph step reads 1, 0, 0."""

    every = 1

    def __init__(self) -> None:
        self._start = self._first = self._end = (0, 0)

    def on_start(self, state: TrainState) -> None:
        self._start = self._first = self._end = _snapshot()

    def on_step(self, info: StepInfo, state: TrainState) -> None:
        if info.step == 1:
            self._first = _snapshot()

    def on_end(self, result: RunResult, state: TrainState) -> None:
        self._end = _snapshot()

    @property
    def graphs(self) -> int:
        return self._first[0] - self._start[0]

    @property
    def graph_breaks(self) -> int:
        return self._end[1] - self._start[1]

    @property
    def recompiles(self) -> int:
        return self._end[0] - self._first[0]

    def as_dict(self) -> dict[str, int]:
        return {"graphs": self.graphs, "graph_breaks": self.graph_breaks, "recompiles": self.recompiles}
