"""Document sources: where the text comes from, named by a `scheme:` string.

A source yields documents (strings) in a fixed order and has a `key` that changes whenever its
contents would, so a preparation can tell whether an output directory is its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from blueberry.errors import UserError
from pipelines.builtin import builtin_corpus_hash, iter_builtin_documents


class Source(Protocol):
    spec: str

    @property
    def key(self) -> str: ...

    def documents(self) -> Iterator[str]: ...


@dataclass(frozen=True)
class BuiltinSource:
    spec: str = "builtin"

    @property
    def key(self) -> str:
        return f"builtin:{builtin_corpus_hash()}"

    def documents(self) -> Iterator[str]:
        return iter_builtin_documents()


SCHEMES = ("builtin",)


def open_source(spec: str) -> Source:
    """The source a `--source` string names."""
    if spec == "builtin":
        return BuiltinSource()
    raise UserError(f"unknown source {spec!r}: use one of {', '.join(SCHEMES)}")
