"""One copy of a token dataset per node, shared by every trial through the Ray object store.

`share(data)` puts each shard's rows into the object store once and returns a `SharedShards`
handle: the manifest plus object references, a few hundred bytes that pass to trials with
`tune.with_parameters` or as a task argument. `handle.open()` inside a trial returns a
`TokenShards` whose arrays are read-only views straight onto the node's shared-memory object
store: no trial copies the tokens, however many run on the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blueberry.data.format import Manifest
from blueberry.data.tokens import TokenShards


@dataclass(frozen=True)
class SharedShards:
    manifest_json: str
    refs: dict[str, list[Any]]  # split -> ObjectRefs of (rows, seq_len + 1) arrays

    def open(self) -> TokenShards:
        """The dataset, zero-copy from the object store (call inside a Ray worker or driver)."""
        import ray

        manifest = Manifest.from_json(self.manifest_json)
        return TokenShards(manifest, {split: ray.get(refs) for split, refs in self.refs.items()})

    @property
    def nbytes(self) -> int:
        manifest = Manifest.from_json(self.manifest_json)
        item = 2 if manifest.dtype == "uint16" else 4
        return sum(s.sequences for s in manifest.splits.values()) * manifest.row_len * item


def share(data: TokenShards) -> SharedShards:
    """Put `data`'s rows into the object store (one copy, read from the memory map) and return the handle."""
    import ray

    refs = {split: [ray.put(array) for array in store.arrays] for split, store in data.rows.items()}
    return SharedShards(manifest_json=data.manifest.to_json(), refs=refs)
