"""Every GPU figure issue #27 asks for, in one command that fits the rare GPU machine (one H100, about eight
minutes), with nothing to fetch from the network:

    python -m blueberry.bench.gpu --out DIR              # on a CUDA machine
    python -m blueberry.bench.gpu --out DIR --dry-run    # tiny presets on the CPU: the same report, in minutes
    python -m blueberry.bench.gpu --out DIR --only decode nano-151m    # rerun some sections
    python -m blueberry.bench.gpu --paste DIR/gpu-bench.md             # into docs/benchmarks.md's GPU section

It writes DIR/gpu-bench.json (every figure) and DIR/gpu-bench.md (the tables), rewritten after each section,
so a run stopped part-way keeps what it measured. `--paste` puts a gpu-bench.md between the markers of the GPU
section of docs/benchmarks.md (`--doc` names another file), replacing what was there.

Sections, in the order they run:
- nano-88m: the speedrun's shape (seq 2048, batch 8, bf16 autocast, compiled, Muon + AdamW) trained by
  `train()` itself on the built-in corpus: tokens/s over the steps after the first three (compilation happens
  in the untimed warm-up before them), MFU from `flops_per_token` and the device's peak bf16 throughput, and
  the time the seed's 8,011,776-token speedrun would take at that rate (its record: about 86 s on one RTX 4090);
- decode: random nano-88m weights in bf16, greedy, a 32-token prompt and 128 new tokens at batch 1, 8 and 64:
  tokens/s of the eager engine, the compiled engine (CUDA graphs) and transformers' `generate` on the exported
  model (`blueberry.bench.generate_speed`), and whether they produced the same tokens;
- nano-88m-moe (8 experts, top-2; the grouped dispatch) and nano-151m: tokens/s and MFU, as nano-88m;
- dit-cifar and vqvae-cifar: training images/s on the built-in digits resized to 32x32 RGB, CIFAR-10's shape
  (the shape sets the speed; CIFAR-10 itself would need the network).
Each training row also gives the graphs compiled, graph breaks and recompiles (`CompileWatch`; 1, 0, 0 is a
whole-graph step), the setup time (compilation included) and the peak GPU memory.

A section that cannot run (out of the time budget, transformers missing, an error) is skipped: the reason is
printed and recorded, and the next section runs. No section starts after `--budget-s` seconds (default 400,
so the whole command ends within eight minutes on an H100 when its sections take the time measured for them).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from blueberry.bench.compile_watch import CompileWatch
from blueberry.bench.generate_speed import engines, hf_model, random_prompts, time_engines
from blueberry.core.config import TrainConfig, replace
from blueberry.core.hardware import cpu_model, device_name, peak_flops
from blueberry.core.hooks import History
from blueberry.core.loop import train
from blueberry.core.task import Task
from blueberry.data.images import ImageShards
from blueberry.errors import UserError
from blueberry.files import write_atomic
from blueberry.models.dit.config import dit_cifar, dit_cifar_train, dit_tiny, dit_tiny_train
from blueberry.models.dit.task import DiTTask
from blueberry.models.lm.config import ModelConfig, nano_88m, nano_151m, tiny
from blueberry.models.lm.model import Blueberry
from blueberry.models.lm.task import LMTask
from blueberry.models.vqvae.config import vqvae_cifar, vqvae_cifar_train, vqvae_tiny, vqvae_tiny_train
from blueberry.models.vqvae.task import VQVAETask

PASTE_BEGIN, PASTE_END = "<!-- gpu-bench:begin -->", "<!-- gpu-bench:end -->"
SPEEDRUN_TOKENS = 8_011_776  # the seed's speedrun budget
SPEEDRUN_RECORD_S = 86  # its active time on one RTX 4090 (DESIGN.md)
TIMED_AFTER_STEPS = 3  # rates count the steps after these (first-step allocations, cuBLAS and Muon warm-up)
SECTIONS = ("nano-88m", "decode", "nano-88m-moe", "nano-151m", "dit-cifar", "vqvae-cifar")
JSON_NAME, MARKDOWN_NAME = "gpu-bench.json", "gpu-bench.md"


@dataclass(frozen=True)
class TrainingCase:
    """One training row: a task, how it trains (steps, batch, precision, compiled), the data it trains on."""

    name: str  # the section's name (`--only`)
    preset: str  # what the row trains, as the table shows it
    task: Task
    train: TrainConfig
    data: str  # "tokens" (the built-in corpus) or "images" (the built-in digits)
    speedrun: bool = False  # also project the seed's speedrun time


@dataclass(frozen=True)
class DecodeCase:
    name: str  # the model's preset, as the table shows it
    model: ModelConfig
    dtype: torch.dtype
    batches: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    repeats: int


@dataclass(frozen=True)
class Plan:
    device: torch.device
    training: tuple[TrainingCase, ...]
    decode: DecodeCase
    image_shape: tuple[int, int] | None  # (side, channels) the digits are resized to; None: as they are


def moe(cfg: ModelConfig, experts: int) -> ModelConfig:
    return replace(cfg, n_experts=experts, experts_top_k=2)


def lm_case(name: str, label: str, cfg: ModelConfig, steps: int, batch: int, device: torch.device,
            precision: str, speedrun: bool = False) -> TrainingCase:
    train_cfg = TrainConfig(train_tokens=steps * batch * cfg.seq_len, batch_size=batch, eval_every=0,
                            eval_tokens=batch * cfg.seq_len, precision=precision, compile=True, device=str(device))
    return TrainingCase(name, label, LMTask(cfg), train_cfg, "tokens", speedrun)


def image_case(name: str, label: str, task: Task, preset_train: TrainConfig, steps: int, device: torch.device,
               precision: str) -> TrainingCase:
    batch = preset_train.batch_size
    train_cfg = replace(preset_train, train_tokens=steps * batch, eval_every=0, eval_tokens=batch,
                        precision=precision, compile=True, device=str(device))
    return TrainingCase(name, label, task, train_cfg, "images")


def gpu_plan(device: torch.device) -> Plan:
    """The issue's shapes on one GPU, bf16."""
    steps = 40
    return Plan(device, (
        lm_case("nano-88m", "nano-88m", nano_88m(), steps, 8, device, "bf16", speedrun=True),
        lm_case("nano-151m", "nano-151m", nano_151m(), steps, 8, device, "bf16"),
        lm_case("nano-88m-moe", "nano-88m, 8 experts top-2", moe(nano_88m(), 8), steps, 8, device, "bf16"),
        image_case("dit-cifar", "dit-cifar", DiTTask(replace(dit_cifar(), eval_samples=0)), dit_cifar_train(),
                   steps, device, "bf16"),
        image_case("vqvae-cifar", "vqvae-cifar", VQVAETask(vqvae_cifar()), vqvae_cifar_train(), steps, device,
                   "bf16"),
    ), DecodeCase("nano-88m", nano_88m(), torch.bfloat16, (1, 8, 64), prompt_tokens=32, new_tokens=128, repeats=3),
        image_shape=(32, 3))


def dry_run_plan() -> Plan:
    """The same sections at the tiny presets on the CPU, fp32, a few steps: the report's format in minutes."""
    cpu, steps = torch.device("cpu"), 6
    return Plan(cpu, (
        lm_case("nano-88m", "tiny", tiny(), steps, 8, cpu, "fp32", speedrun=True),
        lm_case("nano-151m", "tiny, SwiGLU", replace(tiny(), mlp="swiglu"), steps, 8, cpu, "fp32"),
        lm_case("nano-88m-moe", "tiny, 4 experts top-2", moe(tiny(), 4), steps, 8, cpu, "fp32"),
        image_case("dit-cifar", "dit-tiny", DiTTask(replace(dit_tiny(), eval_samples=0)),
                   replace(dit_tiny_train(), batch_size=32), steps, cpu, "fp32"),
        image_case("vqvae-cifar", "vqvae-tiny", VQVAETask(vqvae_tiny()), replace(vqvae_tiny_train(), batch_size=32),
                   steps, cpu, "fp32"),
    ), DecodeCase("tiny", tiny(), torch.float32, (1, 8, 64), prompt_tokens=16, new_tokens=32, repeats=2),
        image_shape=None)


def builtin_data(data_format: str, seq_len: int, image_shape: tuple[int, int] | None) -> Any:
    """The built-in corpus at `seq_len` ("tokens"), or the built-in digits, resized to `image_shape` ("images"),
    each prepared into the cache on first use."""
    from blueberry.platform.data import open_data, prepared_image_dir

    if data_format == "tokens":
        return open_data("builtin", seq_len, progress=False)
    settings = {} if image_shape is None else {"image_size": image_shape[0], "channels": image_shape[1]}
    return ImageShards.open(prepared_image_dir("builtin", progress=False, **settings))


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_training(case: TrainingCase, plan: Plan) -> dict[str, Any]:
    data = builtin_data(case.data, case.task.units_per_sample, plan.image_shape)
    reset_memory(plan.device)
    history, watch = History(), CompileWatch()
    result = train(case.task, case.train, data, [history, watch])
    steps = history.steps
    skip = min(TIMED_AFTER_STEPS, len(steps) - 2)
    before = steps[skip - 1] if skip > 0 else None
    units = steps[-1].tokens - (before.tokens if before else 0)
    seconds = steps[-1].active_time_s - (before.active_time_s if before else 0.0)
    rate = units / seconds
    peak = peak_flops(plan.device)
    cfg = case.train
    row = {"name": case.name, "preset": case.preset, "unit": case.task.unit, "batch": cfg.batch_size,
           "units_per_sample": case.task.units_per_sample, "precision": cfg.precision,
           "steps_timed": len(steps) - skip, "units_per_s": rate,
           "mfu": case.task.flops_per_unit() * rate / peak if peak else None,
           "peak_memory_gb": peak_memory_gb(plan.device), "setup_s": result.setup_time_s,
           "final_loss": steps[-1].loss, "diverged": result.diverged, **watch.as_dict()}
    if case.speedrun:
        row["speedrun_s"] = SPEEDRUN_TOKENS / rate
    return row


def measure_decode(case: DecodeCase, plan: Plan, time_left: Callable[[], float],
                   skipped: list[dict[str, str]]) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Blueberry(case.model).to(plan.device, case.dtype).eval()  # random weights: speed, not text
    reference = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            reference = hf_model(model, Path(tmp))
    except ImportError as error:
        skipped.append({"what": "decode: transformers' generate", "why": f"transformers is not importable ({error})"})
    calls = engines(model, case.new_tokens, case.prompt_tokens + case.new_tokens, reference)
    skips_before = counters["inductor"]["cudagraph_skips"]
    rows = []
    for batch in case.batches:
        if time_left() <= 0:
            skipped.append({"what": f"decode at batch {batch}", "why": "the time budget was spent"})
            continue
        reset_memory(plan.device)
        timing = time_engines(calls, random_prompts(batch, case.prompt_tokens, case.model.vocab_size),
                              case.new_tokens, case.repeats)
        rows.append({"batch": batch, "tokens_per_s": timing.tokens_per_s, "first_call_s": timing.first_call_s,
                     "same_tokens": timing.same_tokens, "peak_memory_gb": peak_memory_gb(plan.device)})
    return {"model": case.name, "dtype": str(case.dtype).split(".")[-1],
            "prompt_tokens": case.prompt_tokens, "new_tokens": case.new_tokens, "repeats": case.repeats,
            "reference": type(reference).__name__ if reference is not None else None,
            "cuda_graphs": plan.device.type == "cuda" and counters["inductor"]["cudagraph_skips"] == skips_before,
            "rows": rows}


def fmt(value: float | None, spec: str, none: str = "n/a", unit: str = "") -> str:
    return none if value is None else format(value, spec) + unit


def markdown(report: dict[str, Any]) -> str:
    """The report as the GPU section of docs/benchmarks.md shows it."""
    peak = fmt(report["peak_flops"] and report["peak_flops"] / 1e12, ".0f", "no peak FLOP/s known: no MFU",
               " TFLOP/s bf16 peak")
    lines = [f"Device: {report['device']} ({peak}); CPU {report['cpu']}, {report['threads']} threads; torch "
             f"{report['torch']}, CUDA {report['cuda']}; {report['date']}; {report['wall_s']:.0f} s in all.",
             f"Command: `{report['command']}`" + (" (dry run: tiny presets on the CPU)" if report["dry_run"] else ""),
             ""]
    if report["training"]:
        timed = report["training"][0]["steps_timed"]
        lines += [f"Training with `train()`, compiled, each kind's optimizer (Muon + AdamW for the language models, "
                  f"AdamW for the image models): rates over the last {timed} steps of each run, after its untimed "
                  "compile warm-up and first steps; setup includes compilation.", "",
                  f"| run | preset | batch | per second | MFU | speedrun: {SPEEDRUN_TOKENS:,} tokens "
                  f"(record ~{SPEEDRUN_RECORD_S} s on an RTX 4090) | peak memory | "
                  "graphs / breaks / recompiles | setup s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in report["training"]:
            shape = f"{row['batch']} x {row['units_per_sample']}" if row["unit"] == "tokens" else str(row["batch"])
            lines.append(f"| {row['name']} | {row['preset']} | {shape} | {row['units_per_s']:,.0f} {row['unit']} | "
                         f"{fmt(row['mfu'], '.1%')} | {fmt(row.get('speedrun_s'), '.1f', '', ' s')} | "
                         f"{fmt(row['peak_memory_gb'], '.2f', unit=' GB')} | "
                         f"{row['graphs']} / {row['graph_breaks']} / {row['recompiles']} | {row['setup_s']:.0f} |")
        lines.append("")
    decode = report.get("decode")
    if decode and decode["rows"]:
        names = list(decode["rows"][0]["tokens_per_s"])
        lines += [f"Decode, {decode['model']} ({decode['dtype']}, random weights), greedy, prompt "
                  f"{decode['prompt_tokens']} tokens, {decode['new_tokens']} new, median of {decode['repeats']}; "
                  f"reference {decode['reference'] or 'none'}; CUDA graphs: {'yes' if decode['cuda_graphs'] else 'no'}.",
                  "", "| batch | " + " | ".join(f"{n} tok/s" for n in names)
                  + " | compiled / eager | compiled / transformers | same tokens | compile s | peak memory |",
                  "| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- | --- | --- |"]
        for row in decode["rows"]:
            rate = row["tokens_per_s"]
            vs_eager = rate["compiled"] / rate["eager"] if "compiled" in rate else None
            vs_hf = rate["compiled"] / rate["transformers"] if "transformers" in rate and "compiled" in rate else None
            lines.append(f"| {row['batch']} | " + " | ".join(f"{rate[n]:,.0f}" for n in names)
                         + f" | {fmt(vs_eager, '.2f')} | {fmt(vs_hf, '.2f')} | "
                         + ", ".join(n for n, same in row["same_tokens"].items() if same)
                         + f" | {row['first_call_s'].get('compiled', 0):.0f} | "
                         + f"{fmt(row['peak_memory_gb'], '.2f', unit=' GB')} |")
        lines.append("")
    if report["skipped"]:
        lines += ["Skipped:"] + [f"- {s['what']}: {s['why']}" for s in report["skipped"]] + [""]
    return "\n".join(lines)


def run(plan: Plan, out: Path, budget_s: float, only: tuple[str, ...], command: str, dry_run: bool) -> dict[str, Any]:
    """Measure every section of `plan` (or those in `only`), writing the report after each; the report."""
    started = time.perf_counter()
    device = plan.device
    report: dict[str, Any] = {
        "command": command, "dry_run": dry_run, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device), "cpu": cpu_model(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
        "peak_flops": peak_flops(device), "threads": torch.get_num_threads(), "training": [], "decode": None,
        "skipped": [], "wall_s": 0.0}
    skipped = report["skipped"]

    def time_left() -> float:
        return budget_s - (time.perf_counter() - started)

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / JSON_NAME, json.dumps(report, indent=2) + "\n")
        write_atomic(out / MARKDOWN_NAME, markdown(report))

    cases = {case.name: case for case in plan.training}
    for name in SECTIONS:
        if only and name not in only:
            continue
        if time_left() <= 0:
            skipped.append({"what": name, "why": f"the time budget of {budget_s:.0f} s was spent"})
            print(f"skipped {name}: the time budget of {budget_s:.0f} s was spent", flush=True)
            continue
        print(f"--- {name} ({time.perf_counter() - started:.0f} s in)", flush=True)
        # One failing section must not cost the others: GPU time is short and a rerun may not fit.
        try:
            if name == "decode":
                report["decode"] = measure_decode(plan.decode, plan, time_left, skipped)
            else:
                report["training"].append(measure_training(cases[name], plan))
        except Exception as error:  # noqa: BLE001 (recorded with its reason, traceback printed)
            traceback.print_exc()
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            skipped.append({"what": name, "why": reason})
            print(f"skipped {name}: {reason}", flush=True)
        finally:
            torch._dynamo.reset()  # frees the section's graphs (and CUDA-graph memory pools)
            reset_memory(device)
        save()
        print(markdown(report), flush=True)
    save()
    return report


def paste(table: Path, doc: Path) -> None:
    """Replace what lies between `doc`'s gpu-bench markers with the Markdown report `table`."""
    try:
        text, new = doc.read_text(), table.read_text()
    except OSError as error:
        raise UserError(f"cannot read {error.filename}: {error.strerror}") from None
    begin, end = text.find(PASTE_BEGIN), text.find(PASTE_END)
    if begin < 0 or end < begin:
        raise UserError(f"{doc} has no {PASTE_BEGIN} ... {PASTE_END} block to replace: add the two markers where "
                        "the report goes")
    write_atomic(doc, text[:begin + len(PASTE_BEGIN)] + "\n" + new.strip() + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="directory for gpu-bench.json and gpu-bench.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny presets on the CPU: the report's format")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=(), help="run these sections alone")
    parser.add_argument("--budget-s", type=float, default=400.0, help="no section starts after this many seconds")
    parser.add_argument("--paste", type=Path, metavar="GPU_BENCH_MD",
                        help="measure nothing: put this report into --doc's GPU section")
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"), help="the file --paste writes")
    args = parser.parse_args(argv)
    if args.paste is not None:
        try:
            paste(args.paste, args.doc)
        except UserError as error:
            print(f"blueberry.bench.gpu: {error}", file=sys.stderr)
            return 2
        print(f"pasted {args.paste} into {args.doc}")
        return 0
    if args.out is None:
        parser.error("--out DIR is required (or --paste FILE)")
    if args.dry_run:
        plan = dry_run_plan()
    elif torch.cuda.is_available():
        plan = gpu_plan(torch.device("cuda"))
    else:
        print("no CUDA device: run it on a GPU machine, or pass --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    command = "python -m blueberry.bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    run(plan, args.out, args.budget_s, tuple(args.only), command, args.dry_run)
    print(f"wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
