"""Tokenizers behind one small interface: the built-in BPE, a local file or directory, or a hub name.

This is how everything above the data layer reaches a tokenizer: the pipelines encode with it, a
trained run decodes with the one its checkpoint records (`prepared_tokenizer` checks that what loads
under a recorded name is still the same tokenizer, by the sha256 of its definition).

Everything downstream needs the same five things from a tokenizer, so `Tokenizer` wraps the Rust
`tokenizers.Tokenizer` (fast batched encoding) with its name, EOS id, vocabulary size and a hash of
its definition. Hub names load through `transformers.AutoTokenizer`: from the local Hugging Face
cache when it holds them, else from the hub (`HF_ENDPOINT`), which is probed first so that a machine
without a network gets one line at once; `HF_HUB_OFFLINE=1` skips the hub altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from blueberry.data.cache import cache_dir
from blueberry.data.corpus import builtin_corpus_hash, iter_builtin_documents
from blueberry.data.format import TokenizerInfo
from blueberry.errors import UserError
from blueberry.files import write_atomic

BUILTIN = "builtin"
BUILTIN_VOCAB_SIZE = 8192  # the small model presets use the same number (blueberry.models.lm.config)
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class Tokenizer:
    name: str
    backend: tokenizers.Tokenizer
    eos_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()

    def info(self) -> TokenizerInfo:
        return TokenizerInfo(name=self.name, vocab_size=self.vocab_size, sha256=self.sha256, eos_id=self.eos_id)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def train_builtin_tokenizer() -> tokenizers.Tokenizer:
    """Byte-level BPE with `BUILTIN_VOCAB_SIZE` tokens, trained on the built-in corpus."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BUILTIN_VOCAB_SIZE, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(iter_builtin_documents(), trainer)
    return backend


def builtin_tokenizer() -> Tokenizer:
    """The built-in tokenizer, trained once per corpus and cached."""
    path = cache_dir() / "tokenizers" / f"builtin-{builtin_corpus_hash()[:16]}.json"
    if not path.is_file():  # two cold starts both train it (deterministically); each replaces it whole
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, train_builtin_tokenizer().to_str())
    backend = _read_tokenizer_file(path)
    return Tokenizer(name=BUILTIN, backend=backend, eos_id=backend.token_to_id(EOS_TOKEN))


HUB_PROBE_TIMEOUT_S = 3.0


def _check_hub_reachable(spec: str) -> None:
    """Answer at once, offline, instead of after the hub client's retries (about 50 s without a network)."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"tokenizer {spec!r} is not in the local Hugging Face cache and {host} cannot be reached "
                        f"({err.strerror or err}): pass --tokenizer builtin (trained on the built-in corpus, needs no "
                        "network), or a local tokenizer.json or saved tokenizer directory") from None


def _from_transformers(spec: str) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(spec, local_files_only=True)  # the local cache: no network
    except (OSError, ValueError):
        hf = None
    if hf is None:
        if not os.environ.get("HF_HUB_OFFLINE"):
            _check_hub_reachable(spec)
        try:
            hf = AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError) as err:
            offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise UserError(f"cannot load tokenizer {spec!r}{offline}: {str(err).splitlines()[0]}; pass a local "
                            "tokenizer directory or tokenizer.json, or 'builtin'") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer {spec!r} has no fast (Rust) implementation; Blueberry needs a fast tokenizer")
    if hf.eos_token_id is None:
        raise UserError(f"tokenizer {spec!r} defines no EOS token to separate documents")
    return Tokenizer(name=spec, backend=backend, eos_id=hf.eos_token_id)


TOKENIZER_CHOICES = "pass a tokenizer.json, a directory written by save_pretrained, a hub name or 'builtin'"


def _read_tokenizer_file(path: Path) -> tokenizers.Tokenizer:
    """A `tokenizer.json`, or a one-line error saying why the file is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        definition = json.loads(text)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a tokenizer.json (a binary file): {TOKENIZER_CHOICES}") from None
    except ValueError as err:
        raise UserError(f"{path} is not a tokenizer.json (not JSON: {str(err).splitlines()[0]}): "
                        f"{TOKENIZER_CHOICES}") from None
    if not isinstance(definition, dict) or "model" not in definition:
        raise UserError(f"{path} is not a tokenizer.json (JSON without a tokenizer 'model'): {TOKENIZER_CHOICES}")
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001  the Rust binding raises plain Exception for every malformed field
        raise UserError(f"{path} is not a tokenizer.json ({str(err).splitlines()[0][:160]}): "
                        f"{TOKENIZER_CHOICES}") from None


def load_tokenizer(spec: str) -> Tokenizer:
    """`builtin`, a `tokenizer.json` file, a saved tokenizer directory, or a hub name."""
    if spec == BUILTIN:
        return builtin_tokenizer()
    path = Path(spec)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise UserError(f"tokenizer directory {path} holds no tokenizer.json or tokenizer_config.json: "
                            f"{TOKENIZER_CHOICES}")
        if (path / "tokenizer.json").is_file():
            _read_tokenizer_file(path / "tokenizer.json")  # a damaged file fails here in one line
    elif path.suffix == ".json" and not path.exists():
        raise UserError(f"tokenizer file {path} does not exist: {TOKENIZER_CHOICES}")
    if path.is_file():
        backend = _read_tokenizer_file(path)
        eos_id = backend.token_to_id(EOS_TOKEN)
        if eos_id is None:
            raise UserError(f"tokenizer file {path} has no {EOS_TOKEN} token to separate documents")
        return Tokenizer(name=str(path), backend=backend, eos_id=eos_id)
    return _from_transformers(spec)


def prepared_tokenizer(data: Any, candidate: Tokenizer | None = None) -> Tokenizer:
    """The tokenizer token shards `data` were prepared with: `candidate` when it is that one (by the sha256 of
    its definition), else loaded by the name the manifest records and checked the same way (a tokenizer.json
    replaced since would decode and score wrongly, without a sign)."""
    recorded = data.manifest.tokenizer
    if candidate is not None and candidate.sha256 == recorded.sha256:
        return candidate
    loaded = load_tokenizer(recorded.name)
    if loaded.sha256 != recorded.sha256:
        raise UserError(f"tokenizer {recorded.name} has changed since the data was prepared (sha256 "
                        f"{loaded.sha256[:12]}, the manifest records {recorded.sha256[:12]}): prepare the data again")
    return loaded
