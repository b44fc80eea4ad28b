"""`blueberry-export`: a run becomes a directory that Hugging Face transformers loads, and computes the same model.

What this proves:
- each format gives the native model's logits to 1e-4 in float32 at every position of a full
  `seq_len` window (SwiGLU as `Qwen3ForCausalLM`, a SwiGLU mixture of experts as
  `Qwen3MoeForCausalLM`, relu2 as `ApertusForCausalLM`, and both MLP kinds and a relu2 mixture of
  experts as `BlueberryForCausalLM`), loaded with `AutoModelForCausalLM.from_pretrained` in a fresh
  Python process, with no missing, unexpected or reshaped weights; the transformers architectures
  load in that process before anything has imported `blueberry`, the Blueberry one after the one
  documented import;
- greedy `generate()` gives the native model's greedy tokens (Qwen3 with transformers' KV cache,
  Blueberry without one);
- `AutoTokenizer` gives the run tokenizer's ids and text back, with the EOS id, and a tokenizer
  whose post-processor adds a BOS is exported without it (the ids the model was trained on);
- `config.json` says qwen3 / apertus with the run's RoPE base, RMSNorm eps and head_dim;
- `--dtype bfloat16` writes and loads bfloat16 weights;
- the name tables are bijections (`native_weights` inverts `hf_weights`);
- refused input (an --out that is a file, a missing run, a format that cannot hold the model, a
  non-empty --out, a --force over something that is not an export, an --out holding the run, a
  write that fails midway) is one line on stderr with exit status 2, and leaves nothing behind.

The runs are written the way training writes them (`TrainState` + `save_checkpoint`, the
tokenizer recorded in the checkpoint) with small random models: training one on this machine's
CPUs would take minutes. `test_a_trained_run_exports` (slow) exports a run `blueberry-train` made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from blueberry.cli import export as export_cli
from blueberry.core.checkpoint import checkpoint_path, save_checkpoint
from blueberry.core.config import TrainConfig
from blueberry.core.optim import build_optimizer
from blueberry.core.state import TrainState
from blueberry.data.tokenizer import EOS_TOKEN, load_tokenizer
from blueberry.errors import ConfigError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.export import FORMATS, check_format, hf_weights, native_weights, weight_names
from blueberry.models.lm.task import LMTask
from blueberry.inference.run import open_run

TOLERANCE = 1e-4  # float32 logits; the observed differences are about 1e-6 (docs/export.md)
SEQ_LEN = 64
TEXTS = ["Once upon a time, the quick brown fox", "naïve café — 東京\n\n  two  spaces", f"a{EOS_TOKEN}b", ""]


def small_config(mlp: str, n_experts: int = 0) -> ModelConfig:
    # A RoPE base and an eps far from the defaults, so that a config that dropped either would show in
    # the logits (the queries' and keys' mean square is about 0.03 here: eps 1e-3 moves them by 2%).
    return ModelConfig(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, mlp=mlp,
                       seq_len=SEQ_LEN, rope_base=500.0, norm_eps=1e-3, n_experts=n_experts, experts_top_k=2)


def write_tokenizer(path: Path, bos: bool = False) -> Path:
    """A byte-level BPE like the built-in one, trained in milliseconds; with `bos`, one whose
    post-processor prepends EOS as a BOS (as some hub tokenizers do)."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "once upon a time there was a tokenizer"] * 20
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer)
    if bos:
        backend.post_processor = processors.TemplateProcessing(single=f"{EOS_TOKEN} $A",
                                                               special_tokens=[(EOS_TOKEN, 0)])
    backend.save(str(path))
    return path


def write_run(runs_dir: Path, name: str, cfg: ModelConfig, tokenizer_file: Path) -> None:
    """A run directory as training leaves it: `runs_dir/name/checkpoints/step-N.pt` from a `TrainState`."""
    torch.manual_seed(0)
    task = LMTask(cfg)
    model = task.build_model()
    with torch.no_grad():  # trained-looking gains and routers: a mapping that swapped two norms would show
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)
            elif "router" in pname:
                p.normal_(0.0, 0.5)
    train = TrainConfig(train_tokens=1024, batch_size=1, device="cpu")
    tokenizer = load_tokenizer(str(tokenizer_file))
    state = TrainState(task, train, model, build_optimizer(model, train, torch.device("cpu"), task.hidden_matrices(model)),
                       SimpleNamespace(position=0), torch.device("cpu"),
                       data_description={"tokenizer": asdict(tokenizer.info())})
    state.step, state.tokens = 3, 3 * SEQ_LEN
    save_checkpoint(checkpoint_path(runs_dir / name / "checkpoints", state.step), state)


# name: (config, tokenizer with a BOS post-processor)
RUNS = {
    "relu2": (small_config("relu2"), False),
    "swiglu": (small_config("swiglu"), False),
    "swiglu-moe": (small_config("swiglu", n_experts=4), False),
    "relu2-moe": (small_config("relu2", n_experts=4), False),
    "bos-tokenizer": (small_config("relu2"), True),
}
# export name: (run, extra flags); the transformers formats first (the loader checks blueberry is not imported yet)
EXPORTS = {
    "relu2-apertus": ("relu2", []),
    "swiglu-qwen3": ("swiglu", []),
    "swiglu-moe-qwen3_moe": ("swiglu-moe", []),
    "relu2-bf16": ("relu2", ["--dtype", "bfloat16"]),
    "bos-tokenizer": ("bos-tokenizer", []),
    "relu2-blueberry": ("relu2", ["--format", "blueberry"]),
    "swiglu-blueberry": ("swiglu", ["--format", "blueberry"]),
    "relu2-moe-blueberry": ("relu2-moe", []),
}
BY_CONSOLE_SCRIPT = "swiglu-qwen3"  # exported through the installed `blueberry-export` command


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-runs")
    plain, bos = write_tokenizer(root / "tokenizer.json"), write_tokenizer(root / "bos-tokenizer.json", bos=True)
    for name, (cfg, with_bos) in RUNS.items():
        write_run(root / "runs", name, cfg, bos if with_bos else plain)
    return root / "runs"


@pytest.fixture(scope="module")
def exports(runs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exports")
    for name, (run, flags) in EXPORTS.items():
        args = ["--run", run, "--runs-dir", str(runs_dir), "--out", str(out / name), *flags]
        if name == BY_CONSOLE_SCRIPT:
            done = subprocess.run([str(Path(sys.executable).parent / "blueberry-export"), *args],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
            assert "as qwen3 (Qwen3ForCausalLM, float32)" in done.stdout
        else:
            assert export_cli.main(args) == 0
    return {name: out / name for name in EXPORTS}


LOADER = r"""
import json, sys, torch
spec = json.loads(open(sys.argv[1]).read())
from transformers import AutoModelForCausalLM, AutoTokenizer
ids = torch.tensor(spec["ids"])
results = {}
for name, directory in spec["exports"].items():
    if json.load(open(directory + "/config.json"))["model_type"] == "blueberry":
        import blueberry.models.lm.hf  # the one import the blueberry format needs
    blueberry_imported = any(m.split(".")[0] == "blueberry" for m in sys.modules)
    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        logits = model(ids).logits.float()
    generated = model.generate(ids[:1, :8], max_new_tokens=8, do_sample=False)[0, 8:]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoded = [tokenizer(text).input_ids for text in spec["texts"]]
    results[name] = {
        "class": type(model).__name__, "dtype": str(model.dtype), "blueberry_imported": blueberry_imported,
        "load_problems": {k: sorted(map(str, v)) for k, v in info.items() if v},
        "logits": logits, "generated": generated.tolist(),
        "encoded": encoded, "decoded": [tokenizer.decode(e) for e in encoded], "eos_token_id": tokenizer.eos_token_id,
        "rope_parameters": getattr(model.config, "rope_parameters", None),
    }
torch.save(results, sys.argv[2])
"""


@pytest.fixture(scope="module")
def loaded(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every export loaded by transformers in one fresh Python process."""
    work = tmp_path_factory.mktemp("loader")
    spec = {"exports": {name: str(path) for name, path in exports.items()}, "ids": probe_ids().tolist(),
            "texts": TEXTS}
    (work / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-c", LOADER, str(work / "spec.json"), str(work / "results.pt")],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(work / "results.pt", weights_only=False)


def probe_ids() -> torch.Tensor:
    """Two full windows of token ids, fixed."""
    return torch.randint(0, 300, (2, SEQ_LEN), generator=torch.Generator().manual_seed(7))


def greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int, eos_id: int) -> list[int]:
    ids, out = prompt, []
    for _ in range(steps):
        token = int(model(ids).logits[0, -1].argmax())
        out.append(token)
        if token == eos_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("name, architecture", [
    ("relu2-apertus", "ApertusForCausalLM"),
    ("swiglu-qwen3", "Qwen3ForCausalLM"),
    ("swiglu-moe-qwen3_moe", "Qwen3MoeForCausalLM"),
    ("relu2-blueberry", "BlueberryForCausalLM"),
    ("swiglu-blueberry", "BlueberryForCausalLM"),
    ("relu2-moe-blueberry", "BlueberryForCausalLM"),
])
def test_exported_model_gives_the_native_logits_in_a_fresh_process(name, architecture, loaded, runs_dir):
    result = loaded[name]
    run = open_run(EXPORTS[name][0], runs_dir)
    with torch.no_grad():
        expected = run.model(probe_ids()).logits
    assert result["class"] == architecture
    assert result["load_problems"] == {}
    assert result["blueberry_imported"] == (architecture == "BlueberryForCausalLM")
    assert result["dtype"] == "torch.float32"
    difference = (result["logits"] - expected).abs().max().item()
    assert difference < TOLERANCE, f"{name}: max |logit difference| {difference:.2e}"
    with torch.no_grad():
        assert result["generated"] == greedy(run.model, probe_ids()[:1, :8], 8, run.tokenizer.eos_id)


def test_tokenizer_round_trips_through_autotokenizer(loaded, runs_dir):
    tokenizer = open_run("relu2", runs_dir).tokenizer
    for name in ("relu2-apertus", "swiglu-qwen3", "relu2-blueberry"):
        assert loaded[name]["encoded"] == tokenizer.encode_batch(TEXTS)
        assert loaded[name]["decoded"] == TEXTS
        assert loaded[name]["eos_token_id"] == tokenizer.eos_id


def test_a_tokenizer_that_adds_a_bos_is_exported_without_it(loaded, runs_dir):
    tokenizer = open_run("bos-tokenizer", runs_dir).tokenizer
    assert tokenizer.backend.encode("the fox").ids[0] == tokenizer.eos_id  # the run's tokenizer would add one
    assert loaded["bos-tokenizer"]["encoded"] == tokenizer.encode_batch(TEXTS)  # what training encoded


def test_qwen3_config_carries_the_run_shape(exports, loaded):
    cfg = RUNS["swiglu"][0]
    config = json.loads((exports["swiglu-qwen3"] / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert (config["rope_theta"], config["rms_norm_eps"], config["head_dim"]) == (500.0, 1e-3, cfg.head_dim)
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert config["max_position_embeddings"] == SEQ_LEN and config["hidden_act"] == "silu"
    assert loaded["swiglu-qwen3"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 500.0}
    apertus = json.loads((exports["relu2-apertus"] / "config.json").read_text())
    assert (apertus["model_type"], apertus["hidden_act"]) == ("apertus", "relu2")
    # No llama3 frequency scaling (Apertus's default when RoPE parameters are absent).
    assert loaded["relu2-apertus"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 500.0}


def test_directory_holds_safetensors_tokenizer_card_and_generation_config(exports, runs_dir):
    directory = exports["relu2-blueberry"]
    assert sorted(p.name for p in directory.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                           "model.safetensors", "tokenizer.json",
                                                           "tokenizer_config.json"]
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0 and generation["use_cache"] is False
    card = (directory / "README.md").read_text()
    assert card.count("# relu2\n") == 1 and "import blueberry.models.lm.hf" in card and "192 training tokens" in card
    # The very tokenizer the run recorded: Blueberry can train on or prepare data with the export's.
    assert load_tokenizer(str(directory / "tokenizer.json")).sha256 == open_run("relu2", runs_dir).tokenizer.sha256
    assert "import blueberry" not in (exports["relu2-apertus"] / "README.md").read_text()
    assert not list(directory.parent.glob(".*"))  # no staging or replaced directories left


def test_bfloat16_export_loads_as_bfloat16(loaded, runs_dir):
    result = loaded["relu2-bf16"]
    assert result["class"] == "ApertusForCausalLM" and result["dtype"] == "torch.bfloat16"
    with torch.no_grad():
        expected = open_run("relu2", runs_dir).model(probe_ids()).logits
    assert (result["logits"] - expected).abs().max().item() < 0.5  # bfloat16 weights: close, not equal


@pytest.mark.parametrize("cfg", [small_config("relu2"), small_config("swiglu"), small_config("swiglu", 4),
                                 small_config("relu2", 4)], ids=["relu2", "swiglu", "swiglu-moe", "relu2-moe"])
def test_name_tables_are_bijections(cfg):
    state = LMTask(cfg).build_model().state_dict()
    for fmt in FORMATS:
        try:
            check_format(cfg, fmt)
        except ConfigError:
            continue
        names = weight_names(cfg, fmt)
        assert len(set(names.values())) == len(names)
        back = native_weights(cfg, hf_weights(cfg, state, fmt), fmt)
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("blueberry-export: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("run, flags, message", [
    ("relu2-moe", ["--format", "qwen3_moe"], ("--format qwen3_moe holds only SwiGLU mixtures of experts, not a "
                                              "relu2 mixture of experts: use --format blueberry")),
    ("relu2-moe", ["--format", "apertus"], "--format apertus holds only dense relu2 models"),
    ("swiglu", ["--format", "apertus"], "use --format qwen3 (or blueberry)"),
    ("relu2", ["--format", "qwen3"], "--format qwen3 holds only dense SwiGLU models"),
    ("nope", [], "no run 'nope' in --runs-dir"),
])
def test_refused_runs_and_formats_are_one_line_and_write_nothing(run, flags, message, runs_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert export_cli.main(["--run", run, "--runs-dir", str(runs_dir), "--out", str(out), *flags]) == 2
    assert message in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_refused_destinations_are_one_line_and_touch_nothing(runs_dir, tmp_path, capsys):
    def export(out: Path, *flags: str) -> int:
        return export_cli.main(["--run", "relu2", "--runs-dir", str(runs_dir), "--out", str(out), *flags])

    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    assert export(a_file) == 2 and "is a file" in one_line_error(capsys)
    assert export(a_file / "below") == 2 and "which is a file" in one_line_error(capsys)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert export(busy) == 2 and "is not empty: pass --force" in one_line_error(capsys)
    assert export(busy, "--force") == 2 and "is not a previous blueberry-export" in one_line_error(capsys)
    # A model directory from elsewhere (the files of a hub download) is not ours to delete.
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, text in [("config.json", "{}"), ("model.safetensors", ""), ("README.md", "---\ntags: [llama]\n---\n")]:
        (downloaded / name).write_text(text)
    assert export(downloaded, "--force") == 2 and "is not a previous blueberry-export" in one_line_error(capsys)
    assert sorted(p.name for p in downloaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert export(runs_dir / "relu2", "--force") == 2 and "holds the run's checkpoint" in one_line_error(capsys)
    assert a_file.read_text() == "keep me" and [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "busy", "downloaded"]
    assert sorted(p.name for p in (runs_dir / "relu2").iterdir()) == ["checkpoints"]


def test_force_replaces_a_previous_export_whole_and_a_failed_write_leaves_it(runs_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["--run", "relu2", "--runs-dir", str(runs_dir), "--out", str(out)]
    assert export_cli.main(base) == 0
    assert export_cli.main([*base, "--format", "blueberry", "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "blueberry"

    import blueberry.export.directory as platform_export

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(platform_export, "save_file", disk_full)
    assert export_cli.main([*base, "--force"]) == 2
    assert "cannot write --out" in one_line_error(capsys)
    assert json.loads((out / "config.json").read_text())["model_type"] == "blueberry"  # the previous one, whole
    assert export_cli.main(["--run", "relu2", "--runs-dir", str(runs_dir), "--out", str(tmp_path / "new")]) == 2
    one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory, no half-written export


@pytest.mark.slow
def test_a_trained_run_exports(quick_run_dir, tmp_path):
    """A run `blueberry-train` wrote (the built-in tokenizer) through the command; loaded in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runs, name = quick_run_dir
    assert export_cli.main(["--run", name, "--runs-dir", str(runs), "--out", str(tmp_path / "out")]) == 0
    run = open_run(name, runs)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, run.tokenizer.vocab_size, (1, run.task.config.seq_len),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - run.model(ids).logits).abs().max().item() < TOLERANCE
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert [tokenizer(text).input_ids for text in TEXTS] == run.tokenizer.encode_batch(TEXTS)
