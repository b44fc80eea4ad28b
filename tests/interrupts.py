"""A hook that stops a run at a chosen step, as a crash would: the resume tests' interruption."""

from blueberry.core.hooks import Hook


class Interrupt(Exception):
    pass


class InterruptAt(Hook):
    """Kills the run right after step `step` (after a checkpointer registered before it has saved it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, info, state):
        if info.step == self.step:
            raise Interrupt
