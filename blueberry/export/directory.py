"""A trained run as a directory that Hugging Face `transformers` loads: what `blueberry-export` writes.

    out/
      config.json              the architecture (a model kind's converter decides which: for the
      model.safetensors        language model, blueberry/models/lm/export.py) and its weights
      generation_config.json   EOS id, and whether generation may use a KV cache
      tokenizer.json           the run's tokenizer, as `AutoTokenizer` loads it
      tokenizer_config.json
      README.md                a model card: the run, how to load it, its configuration

The directory is built whole in a hidden sibling (`.NAME.*.partial`) and renamed into place, so
`out` is never half-written: an interrupted or failed export leaves no `out` (or the previous one).
An `out` that exists and is not empty is refused, unless `force` is given and it is a previous
export (`config.json`, `model.safetensors` and a model card tagged `blueberry`), which is then
replaced whole; no other directory is ever deleted. An `out` that holds the run's own checkpoint is refused outright.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tokenizers
from safetensors.torch import save_file

from blueberry.core.capabilities import ExportedModel, OpenedRun
from blueberry.errors import UserError
from blueberry.files import fsync_directory, read_json_object

EXPORT_MARKERS = ("config.json", "model.safetensors")  # what makes a directory a previous export
WEIGHTS_FILE = "model.safetensors"
CARD_TAG = "tags: [blueberry]"  # in the model card's front matter: what marks a directory as our export


def is_previous_export(out: Path) -> bool:
    """Whether `out` is what `blueberry-export` wrote: its files and a model card tagged `blueberry`. Any
    other model directory (one downloaded from a hub holds config.json and model.safetensors too) is not
    replaced, so --force never deletes what this command did not write."""
    if not all((out / name).is_file() for name in (*EXPORT_MARKERS, "README.md")):
        return False
    card = (out / "README.md").read_text(encoding="utf-8", errors="replace")
    front_matter = card.split("---")[1] if card.startswith("---") and card.count("---") >= 2 else ""
    return CARD_TAG in front_matter.splitlines()


def check_destination(out: Path, force: bool = False, protect: Path | None = None) -> None:
    """Refuse, before any work, an `out` that cannot or may not receive an export."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory (it is created if missing)")
    if protect is not None and protect.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--out {out} holds the run's checkpoint {protect}: export to a directory outside the run")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {out} is not empty: pass --force to replace a previous export, or choose a "
                            "new directory")
        if not is_previous_export(out):
            raise UserError(f"--out {out} is not empty and is not a previous blueberry-export (no "
                            f"{' and '.join(EXPORT_MARKERS)}, or a model card without the blueberry tag): --force "
                            "replaces only an export; choose a new directory")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out} is under {ancestor}, which is a file: choose another directory")


def export_run(run: OpenedRun, model: ExportedModel, out: Path, force: bool = False) -> Path:
    """Write `model` (the run's converted model) with the run's tokenizer and a model card to `out`."""
    out = Path(out)
    check_destination(out, force, protect=run.checkpoint)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become out's mode
    except OSError as err:
        raise UserError(f"cannot write --out {out} ({err.strerror}): choose a directory you can write") from None
    try:
        _write_files(staging, run, model, out)
        _move_into_place(staging, out)
    except OSError as err:
        raise UserError(f"cannot write --out {out} ({err.strerror or err}): choose a directory you can write, "
                        "with room for the weights") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_files(directory: Path, run: OpenedRun, model: ExportedModel, out: Path) -> None:
    tokenizer_json, tokenizer_config, note = hf_tokenizer(run.tokenizer, model.max_length)
    save_file(model.weights, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    texts = {
        "config.json": _json(model.config),
        "generation_config.json": _json(model.generation_config),
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": _json(tokenizer_config),
        "README.md": model_card(run, model, out, note),
    }
    for name, text in texts.items():
        (directory / name).write_text(text, encoding="utf-8")
    for path in directory.iterdir():
        path.chmod(0o666 & ~_umask())  # safetensors writes 0600
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_directory(directory)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished directory to `out`; a previous export there is renamed away first, then deleted."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)  # onto the empty directory just made
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)  # rename(2) replaces an empty directory
    fsync_directory(out.parent)


def hf_tokenizer(tokenizer: Any, max_length: int) -> tuple[str, dict[str, Any], str]:
    """`tokenizer.json`, `tokenizer_config.json` and a note for the model card, for a Blueberry
    tokenizer (`blueberry.data.tokenizer.Tokenizer`: `.backend`, `.eos_id`, `.name`).

    Blueberry encodes training text without special tokens (`add_special_tokens=False`); a
    tokenizer whose post-processor adds some (a BOS, say) would give `tokenizer(text)` ids the
    model never saw, so that post-processor is removed. `tokenizer_class` is the generic
    `PreTrainedTokenizerFast`, which every transformers version reads."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    note = ""
    probe = "Blueberry"
    if backend.encode(probe).ids != backend.encode(probe, add_special_tokens=False).ids:
        backend.post_processor = None
        note = ("Its post-processor, which added special tokens on encoding, is removed: the model was trained "
                "on text encoded without them.")
    eos = backend.id_to_token(tokenizer.eos_id)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "model_max_length": max_length,
              "clean_up_tokenization_spaces": False}
    return backend.to_str(pretty=True), config, note


def model_card(run: OpenedRun, model: ExportedModel, out: Path, tokenizer_note: str = "") -> str:
    """README.md: what the directory holds, how to load it, and the run it came from."""
    saved, tokenizer = run.saved, run.tokenizer
    load = [
        *([model.requires] if model.requires else []),
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{out}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
        'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=True)[0]))",
    ]
    origin = (f"A Blueberry language model, exported by `blueberry-export` from `{run.checkpoint}` "
              f"(step {saved.step:,}, {saved.tokens:,} training tokens).")
    weights = (f"Weights: `{WEIGHTS_FILE}`, {model.config.get('dtype', 'float32')}. The model takes at most "
               f"{model.max_length} tokens.")
    recorded = saved.data.get("tokenizer") or {}
    eos = tokenizer.backend.id_to_token(tokenizer.eos_id)
    vocabulary = (f"`{tokenizer.name}` (sha256 `{recorded.get('sha256', tokenizer.sha256)}`, as the checkpoint "
                  f"records), {tokenizer.vocab_size:,} tokens; documents end with EOS `{eos}` (id "
                  f"{tokenizer.eos_id}); no BOS. {tokenizer_note}").rstrip()
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", CARD_TAG, "---",
             f"# {_run_title(run.checkpoint)}", "", origin, "",
             "## Architecture", "", model.description, "",
             "## Load", "", "```python", *load, "```", "", weights, "",
             "## Tokenizer", "", vocabulary, ""]
    result = read_json_object(run.checkpoint.parent.parent / "result.json")
    if result is not None and result.get("final/tokens") == saved.tokens:
        metrics = {k.removeprefix("final/"): v for k, v in result.items() if k.startswith("final/val_")}
        if metrics:
            lines += ["## Result", "", *(f"- {k}: {v:.4f}" for k, v in metrics.items()), ""]
    lines += ["## Configuration", "", "Model:", "", "```json", _json(saved.model_config).rstrip(), "```", "",
              "Training:", "", "```json", _json(saved.train_config).rstrip(), "```", ""]
    return "\n".join(lines)


def _run_title(checkpoint: Path) -> str:
    """The run's directory name for `runs/NAME/checkpoints/step-N.pt`; the file's stem otherwise."""
    return checkpoint.parent.parent.name if checkpoint.parent.name == "checkpoints" else checkpoint.stem


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"
