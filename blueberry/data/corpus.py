"""The built-in corpus: documentation every Python installation carries, read offline.

Documents are (1) the reference-manual topics behind `help()` (`pydoc_data.topics`) and (2) for each
standard-library module, its module, class and function docstrings joined in source order. Sources
are parsed with `ast`, never imported, so building the corpus has no side effects. The corpus differs
between Python versions, so everything built from it is keyed by its hash.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if not _SKIPPED_DIRS.intersection(p.relative_to(root).parts)]


def _module_docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""  # a few stdlib files are templates or use another encoding on purpose
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, _DOC_NODES))
    return "\n\n".join(d for d in docs if d)


@lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
    """Every document of the built-in corpus, in a fixed order."""
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    docs += [text for text in map(_module_docstrings, _stdlib_sources()) if text]
    return tuple(docs)


def iter_builtin_documents() -> Iterator[str]:
    yield from builtin_documents()


@lru_cache(maxsize=1)
def builtin_corpus_hash() -> str:
    digest = hashlib.sha256(f"python {sys.version_info[:2]}".encode())
    for doc in builtin_documents():
        digest.update(hashlib.sha256(doc.encode()).digest())
    return digest.hexdigest()
