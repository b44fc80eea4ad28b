"""What a trained language model can do (`LMTask.capabilities`): continue text, or draw the images a caption
names when it was trained over image codes (`blueberry-generate`); be scored on downstream tasks
(`blueberry-eval`, and `--eval-tasks` while it trains); become a Hugging Face model (`blueberry-export`).

Each class here is the command's logic for this kind, on a run the command opened; the decoding engine, the
scoring rules and the weight maps are the kind's other modules (`generate.py`, `eval.py`, `export.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blueberry.core.capabilities import (ArtifactLogger, Downstream, Evaluate, Evaluation, Export, Generate,
                                         OpenedRun, SampleSettings, Services, option)
from blueberry.core.hooks import Hook
from blueberry.data.tokenizer import prepared_tokenizer
from blueberry.errors import UserError
from blueberry.models.lm.export import DTYPES, FORMATS
from blueberry.vision.grid import write_grid
from blueberry.vision.scoring import ImageScorer, judged_line

MAX_SEQUENCES = 4096  # prompts x samples decoded in one batch: more would not fit a GPU's memory, or finish


def run_tokenizer(run: OpenedRun) -> Any:
    """The tokenizer the run was trained with (`blueberry.inference` loads and checks it)."""
    if run.tokenizer is None:
        raise UserError(f"{run.name} does not record its tokenizer (the checkpoint predates that record): pass "
                        "--tokenizer with the one the run was trained with (builtin, a tokenizer.json, or a hub name)")
    return run.tokenizer


@dataclass(frozen=True)
class GenerateOptions:
    prompt: tuple[str, ...] = option((), "text to continue (repeatable: one batch); for a model over image codes, "
                                         "the captions to draw (default: every caption)", metavar="TEXT")
    max_new_tokens: int = option(128, "tokens to generate at most", minimum=1)
    temperature: float = option(0.8, "0: greedy", minimum=0)
    top_k: int = option(0, "sample from the k most likely tokens (0: all)", minimum=0)
    top_p: float = option(1.0, "sample from the most likely tokens holding this much probability (1: all)",
                          positive=True, maximum=1)
    num_samples: int = option(1, "samples per prompt", minimum=1, maximum=MAX_SEQUENCES)
    out: Path | None = option(None, "a model over image codes: the PNG to write (a row per prompt)")
    score: bool = option(False, "a model over image codes: also judge the images (the share recognised as their "
                                "caption's class, FID) against --data")
    data: str = option("builtin", "with --score: the image data the run's codes were encoded from")
    visual_tokenizer: Path | None = option(None, "a model over image codes: the VQ-VAE checkpoint that decodes "
                                                 "them, where the one its data recorded has moved (the same file)",
                                           metavar="CHECKPOINT")
    compile: bool = option(False, "decode text with the compiled engine (one graph a step, CUDA graphs on a GPU; the "
                                  "first step compiles, tens of seconds)")


class TextGeneration(Generate):
    """Text continuing each --prompt (one sequence streams as it decodes; several decode in one batch); for a
    model trained over image codes, a grid of the images its captions name."""

    options = GenerateOptions
    summary = "text continuing --prompt (or, for a model over image codes, a grid of the images captions name)"

    def __call__(self, run: OpenedRun, options: GenerateOptions, services: Services) -> None:
        from blueberry.models.lm.generate import Sampling
        from blueberry.models.lm.multimodal import recorded_layout

        tokenizer = run_tokenizer(run)
        sampling = Sampling(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p)
        layout = recorded_layout(run.saved.data, run.model.cfg.vocab_size)
        if layout is not None:
            draw_captions(run, tokenizer, layout, options, sampling, services)
            return
        image_flags = [flag for flag, given in (("--out", options.out is not None), ("--score", options.score),
                                                ("--visual-tokenizer", options.visual_tokenizer is not None)) if given]
        if image_flags:
            raise UserError(f"{run.name} is a language model over text: {', '.join(image_flags)} apply to a model "
                            "over image codes; pass --prompt TEXT")
        if not options.prompt:
            raise UserError(f"{run.name} is a language model: pass --prompt TEXT")
        continue_text(run, tokenizer, options, sampling, services)

    def evaluation_samples(self, task: Any, data: Any, logger: ArtifactLogger, settings: SampleSettings) -> Hook | None:
        """Greedy continuations of fixed prompts at each evaluation, as text files (`samples.py`)."""
        from blueberry.models.lm.samples import DEFAULT_PROMPTS, SampleLogger

        if settings.max_new_tokens == 0:
            return None
        return SampleLogger(prepared_tokenizer(data), logger.log_text, settings.prompts or DEFAULT_PROMPTS,
                            settings.max_new_tokens)


def continue_text(run: OpenedRun, tokenizer: Any, options: GenerateOptions, sampling: Any,
                  services: Services) -> None:
    from blueberry.models.lm.generate import CompiledGenerator, Generator, continuation

    prompts = [ids for ids in tokenizer.encode_batch(list(options.prompt)) for _ in range(options.num_samples)]
    if len(prompts) > MAX_SEQUENCES:
        raise UserError(f"{len(options.prompt)} prompts x {options.num_samples} samples is {len(prompts)} sequences, "
                        f"more than the {MAX_SEQUENCES} one batch decodes: ask for fewer")
    labels = [(p, s) for p in range(len(options.prompt)) for s in range(options.num_samples)]
    engine = (CompiledGenerator if options.compile else Generator)(run.model, eos_id=tokenizer.eos_id)
    if len(prompts) == 1:
        stream_one(engine, tokenizer, options.prompt[0], prompts[0], options.max_new_tokens, sampling, services)
        return
    outputs = engine.generate(prompts, options.max_new_tokens, sampling, services.seed)
    for (p, s), prompt_ids, ids in zip(labels, prompts, outputs):
        header = f"prompt {p + 1}" + (f", sample {s + 1}" if options.num_samples > 1 else "")
        print(f"--- {header} ---\n{options.prompt[p]}{continuation(tokenizer, prompt_ids, ids)}\n", file=services.out)


def stream_one(engine: Any, tokenizer: Any, prompt: str, ids: list[int], max_new_tokens: int, sampling: Any,
               services: Services) -> None:
    """Print the prompt, then each piece of text as soon as its tokens decode to whole characters
    (a byte-level token can end mid-character; its text waits for the next)."""
    from blueberry.models.lm.generate import continuation

    out = services.out
    out.write(prompt)
    out.flush()
    generated: list[int] = []
    shown = ""
    for step in engine.stream([ids], max_new_tokens, sampling, services.seed):
        token = int(step.tokens[0])
        if token == tokenizer.eos_id:
            break
        generated.append(token)
        text = continuation(tokenizer, ids, generated)
        if not text.endswith("\ufffd"):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(continuation(tokenizer, ids, generated)[len(shown):] + "\n")
    out.flush()


def draw_captions(run: OpenedRun, tokenizer: Any, layout: Any, options: GenerateOptions, sampling: Any,
                  services: Services) -> None:
    """A language model over text and image codes: --num-samples images per prompt (every caption without
    --prompt), their codes sampled after the caption, decoded by the VQ-VAE the data recorded, written to --out
    as a grid with a row per prompt; with --score, judged as an image run's samples are."""
    from blueberry.models.lm.generate import Generator
    from blueberry.models.lm.multimodal import (copied_fraction, decode_codes, encode_images, generate_codes,
                                                recorded_visual_tokenizer)

    if options.out is None:
        raise UserError(f"{run.name} generates images after a caption: pass --out FILE.png")
    prompts = list(options.prompt) or list(layout.captions)
    unknown = [p for p in prompts if p not in layout.captions]
    if options.score and unknown:
        raise UserError(f"--score judges images of the data's classes: prompt with its captions "
                        f"({', '.join(layout.captions)}), not {', '.join(map(repr, unknown))}")
    if len(prompts) * options.num_samples > MAX_SEQUENCES:
        raise UserError(f"{len(prompts)} prompts x {options.num_samples} samples is more than the {MAX_SEQUENCES} "
                        "images one grid holds: ask for fewer")
    data = services.open_images(options.data) if options.score else None  # a bad --data answers before sampling
    if data is not None and data.manifest.preparation_key != layout.encoder.get("images_key"):
        raise UserError(f"--data {options.data} is not the image data the run's tokens were encoded from "
                        f"({layout.encoder.get('images', '?')}): pass that data with --data")
    if unknown:
        print(f"note: {', '.join(map(repr, unknown))} is not a caption the run was trained on "
              f"({', '.join(layout.captions)})", file=services.notes)
    vq = recorded_visual_tokenizer(layout, services.open_run, options.visual_tokenizer)
    ids = [p for p in tokenizer.encode_batch(prompts) for _ in range(options.num_samples)]
    started = time.perf_counter()
    codes = generate_codes(Generator(run.model), layout, ids, tokenizer.eos_id, sampling, services.seed)
    images = decode_codes(vq, codes)
    elapsed = time.perf_counter() - started
    title = f"{run.name}: temperature {sampling.temperature:g}" + (f", top-k {sampling.top_k}" if sampling.top_k else "")
    write_grid(images, prompts, title, options.out)
    print(f"wrote {options.out}: {len(ids)} images ({len(prompts)} prompt{'s' * (len(prompts) > 1)} x "
          f"{options.num_samples}) in {elapsed:.2f} s, {len(ids) / elapsed:.1f} images/s "
          f"({layout.codes_per_image} codes each)", file=services.out)
    if data is not None:
        labels = torch.tensor([layout.captions.index(p) for p in prompts]).repeat_interleave(options.num_samples)
        scorer = ImageScorer(data, torch.device(services.device), "classifier")
        print(judged_line(scorer.judge_images(images, labels), len(labels)), file=services.out)
        training = encode_images(vq, data.split_arrays("train")[0], services.device)
        print(f"copies       {copied_fraction(codes, training):.1%} of the samples are a training image's code grid "
              "exactly (memorised rather than composed)", file=services.out)


@dataclass(frozen=True)
class EvaluateOptions:
    tasks: str = option("cloze,bpb", "comma-separated: cloze, bpb (built in), hellaswag=PATH, arc_easy=PATH, "
                                     "arc_challenge=PATH, piqa=PATH; PATH@SPLIT picks a split of a directory")
    data: str = option("builtin", "prepared token data for cloze and bpb: a directory, or builtin (the built-in "
                                  "corpus)")
    limit: int | None = option(None, "score only the first N questions of each task (for bpb: N validation "
                                     "sequences)", minimum=1)
    batch_size: int = option(16, "sequences per forward pass", minimum=1, maximum=MAX_SEQUENCES)


class DownstreamEvaluation(Evaluate):
    """Multiple-choice accuracies (lm-eval's rules), bits per byte, and the centred `core` of a run's model
    (`benchmarks.py` reads the tasks, `eval.py` scores them)."""

    options = EvaluateOptions
    summary = "downstream tasks: cloze and bits per byte built in; HellaSwag, ARC, PIQA from their files"

    def __call__(self, run: OpenedRun, options: EvaluateOptions, services: Services) -> Evaluation:
        from blueberry.models.lm.benchmarks import load_tasks, parse_tasks
        from blueberry.models.lm.eval import evaluate_tasks

        specs = parse_tasks(options.tasks)
        tokenizer = run_tokenizer(run)
        tasks = load_tasks(specs, tokenizer, lambda: services.open_for(run.task, options.data),
                           data_name=f"--data {options.data}")
        metrics = evaluate_tasks(run.model, tokenizer, tasks, options.limit, options.batch_size)
        rows, counts = [], {}
        for name, task in tasks.items():
            if name in metrics:  # token data: bits per byte
                counts[name] = min(options.limit or 2**62, task.manifest.splits["val"].sequences)
                rows.append((name, "bpb", metrics[name], f"{counts[name]} sequences"))
                continue
            counts[name] = min(options.limit or len(task), len(task))
            chance = sum(1 / len(q.choices) for q in task[:counts[name]]) / counts[name]
            for metric in ("acc", "acc_norm"):
                rows.append((name, metric, metrics[f"{name}/{metric}"],
                             f"{counts[name]} questions (chance {chance:.4f})"))
        if "core" in metrics:
            rows.append(("core", "centred", metrics["core"], "mean of (acc_norm - chance) / (1 - chance)"))
        return Evaluation(rows, metrics, {"tasks": options.tasks, "data": options.data, "limit": options.limit,
                                          "counts": counts})

    def scorer(self, run: OpenedRun, batch_size: int) -> Any:
        """What lm-evaluation-harness scores the run with (`blueberry.evals.harness`)."""
        from blueberry.models.lm.eval import LMScorer

        return LMScorer(run.model, run_tokenizer(run), batch_size)


class DownstreamInTraining(Downstream):
    """The same tasks scored while the model trains, on the model in training (`eval.DownstreamEval`)."""

    def metrics(self, tasks: str) -> dict[str, str]:
        from blueberry.models.lm.benchmarks import higher_is_better, parse_tasks, task_metrics

        return {name: "max" if higher_is_better(name) else "min" for name in task_metrics(parse_tasks(tasks))}

    def hook(self, task: Any, data: Any, tasks: str, report: Hook, every: int, limit: int | None) -> Hook:
        from blueberry.models.lm.benchmarks import load_tasks, parse_tasks
        from blueberry.models.lm.eval import DownstreamEval

        tokenizer = prepared_tokenizer(data)
        loaded = load_tasks(parse_tasks(tasks), tokenizer, lambda: data)
        return DownstreamEval(loaded, tokenizer, report=report, every=every, limit=limit)


@dataclass(frozen=True)
class ExportOptions:
    format: str | None = option(None, "the transformers architecture (default: the one the model is exactly: qwen3 "
                                      "or qwen3_moe for SwiGLU, apertus for relu2, blueberry for a relu2 mixture of "
                                      "experts)", choices=FORMATS)
    dtype: str = option("float32", "the weights' dtype", choices=tuple(DTYPES))


class HFExport(Export):
    """SwiGLU models become Qwen3 (or Qwen3-MoE) and dense relu2 models Apertus: transformers' own classes,
    which compute the same function; `blueberry` keeps Blueberry's own module (`export.py`, `hf.py`)."""

    options = ExportOptions
    formats = FORMATS
    summary = "a Hugging Face transformers model directory (safetensors, tokenizer, model card)"

    def __call__(self, run: OpenedRun, options: ExportOptions) -> Any:
        from blueberry.models.lm.export import to_hf

        tokenizer = run_tokenizer(run)
        return to_hf(run.task.config, run.model.state_dict(), options.format, eos_id=tokenizer.eos_id,
                     dtype=options.dtype)
