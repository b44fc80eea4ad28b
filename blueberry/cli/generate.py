"""blueberry-generate: sample a trained run: text from a language model, with the tokenizer it was trained
with, or images from a diffusion model, as a grid.

    blueberry-generate --run tiny-2m --prompt "Once upon a time" --max-new-tokens 100
    blueberry-generate --run tiny-2m --prompt "The" --prompt "A" --num-samples 3 --temperature 0.8 --top-p 0.95
    blueberry-generate --run dit-tiny-NAME --class 3 --num-samples 8 --steps 50 --cfg-scale 2 --sampler heun \
        --out grid.png
    blueberry-generate --run MM_RUN --prompt "a seven" --num-samples 8 --out grid.png    # text + image codes
    blueberry-generate --run VQ_RUN --num-samples 4 --out recon.png --score               # a VQ-VAE's reconstructions

One sequence streams to the terminal as it is produced; several (prompts x samples) decode together
in one batch and print in order, each under a header. An image run writes one PNG: a row per class
(every class without --class), --num-samples images each, sampled with the run's EMA weights; with
--score, the judge of the run's data also says how many it recognises and their FID. A language model over
text and image codes (`blueberry.models.lm.multimodal`) draws a row per prompt, its codes decoded by the
VQ-VAE its data recorded; a VQ-VAE draws held-out images beside their reconstructions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blueberry.cli.common import (ArgumentParser, non_empty, non_negative_float, non_negative_int, positive_float,
                                  positive_int, run_command, seed)
from blueberry.errors import UserError

PROG = "blueberry-generate"


def build_parser() -> ArgumentParser:
    from blueberry.platform.inference import add_run_flags

    parser = ArgumentParser(prog=PROG, description="Sample text from a trained run.")
    add_run_flags(parser)
    parser.add_argument("--prompt", action="append", type=non_empty,
                        help="text to continue (repeatable: one batch); required for a language model")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens to generate at most")
    parser.add_argument("--temperature", type=non_negative_float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=non_negative_int, default=0,
                        help="sample from the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=positive_float, default=1.0,
                        help="sample from the most likely tokens holding this much probability (1: all)")
    parser.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt, or per class")
    images = parser.add_argument_group("image runs (diffusion models)")
    images.add_argument("--class", dest="classes", action="append", metavar="C",
                        help="a class to draw, by name or index (repeatable; default: every class)")
    images.add_argument("--steps", type=positive_int, default=50, help="ODE steps from noise to image")
    images.add_argument("--cfg-scale", type=non_negative_float, default=2.0,
                        help="classifier-free guidance (1: the conditional model alone, 0: unconditional)")
    images.add_argument("--sampler", choices=("euler", "heun"), default="euler",
                        help="euler (one model call a step) or heun (two, second order)")
    images.add_argument("--out", type=Path, help="the PNG to write (required for an image run)")
    images.add_argument("--score", action="store_true",
                        help="also print the share of images the judge of --data recognises as their class, and "
                             "their FID against its training images")
    images.add_argument("--data", default="builtin",
                        help="with --score: the data the run trained on (default: builtin)")
    images.add_argument("--visual-tokenizer", type=Path, metavar="CHECKPOINT",
                        help="a language model over image codes: the VQ-VAE checkpoint that decodes them, where the "
                             "one its data recorded has moved (it must be the same file)")
    parser.add_argument("--compile", action="store_true",
                        help="text from a language model: decode with the compiled engine (one graph a step, CUDA "
                             "graphs on a GPU; the first step compiles, tens of seconds)")
    parser.add_argument("--seed", type=seed, default=0, help="seeds the sampling")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def main_body(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from blueberry.models.lm.generate import CompiledGenerator, Generator, Sampling, continuation
    from blueberry.platform.inference import open_run

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    run = open_run(args.run, args.runs_dir, args.checkpoint, args.device, args.tokenizer)
    if run.task.kind == "dit":
        if args.prompt:
            raise UserError(f"{run.name} generates images, not text: pass --class C and --out FILE.png, not --prompt")
        generate_images(args, run)
        return
    if run.task.kind == "lm" and (run.saved.data.get("tokenizer") or {}).get("visual") is not None:
        generate_coded_images(args, run, sampling)
        return
    if run.task.kind == "vqvae":
        reconstruct_images(args, run)
        return
    if not args.prompt:
        raise UserError(f"{run.name} is a language model: pass --prompt TEXT")
    tokenizer = run.tokenizer
    prompts = [ids for ids in tokenizer.encode_batch(args.prompt) for _ in range(args.num_samples)]
    labels = [(p, s) for p in range(len(args.prompt)) for s in range(args.num_samples)]
    engine = (CompiledGenerator if args.compile else Generator)(run.model, eos_id=tokenizer.eos_id)
    if len(prompts) == 1:
        stream_one(engine, tokenizer, args.prompt[0], prompts[0], args.max_new_tokens, sampling, args.seed)
        return
    outputs = engine.generate(prompts, args.max_new_tokens, sampling, args.seed)
    for (p, s), prompt_ids, ids in zip(labels, prompts, outputs):
        header = f"prompt {p + 1}" + (f", sample {s + 1}" if args.num_samples > 1 else "")
        print(f"--- {header} ---\n{args.prompt[p]}{continuation(tokenizer, prompt_ids, ids)}\n")


def stream_one(engine: Any, tokenizer: Any, prompt: str, ids: list[int], max_new_tokens: int, sampling: Any,
               seed_value: int) -> None:
    """Print the prompt, then each piece of text as soon as its tokens decode to whole characters
    (a byte-level token can end mid-character; its text waits for the next)."""
    from blueberry.models.lm.generate import continuation

    out = sys.stdout
    out.write(prompt)
    out.flush()
    generated: list[int] = []
    shown = ""
    for step in engine.stream([ids], max_new_tokens, sampling, seed_value):
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


def generate_images(args: Any, run: Any) -> None:
    """Write a grid of the run's samples to --out (and with --score, print what the judge makes of them)."""
    import time

    import torch

    from blueberry.models.dit.sample import generate
    from blueberry.models.dit.samples import grid_image, save_png

    if args.out is None:
        raise UserError("an image run writes a picture: pass --out FILE.png")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: directory {args.out.parent} does not exist")
    recorded = run.saved.data.get("images")
    if recorded is None:
        raise UserError(f"{run.checkpoint} does not record its classes: it is not a Blueberry image checkpoint")
    names = list(recorded["classes"])
    wanted = [class_index(c, names) for c in args.classes] if args.classes else list(range(len(names)))
    labels = torch.tensor(wanted).repeat_interleave(args.num_samples)
    model = run.model.ema_model()
    noise = torch.randn((len(labels), *recorded["shape"]), generator=torch.Generator().manual_seed(args.seed))
    started = time.perf_counter()
    images = generate(model, labels, noise, args.steps, args.cfg_scale, args.sampler)
    elapsed = time.perf_counter() - started
    title = f"{run.name}: {args.sampler} {args.steps} steps, cfg {args.cfg_scale:g}"
    try:
        save_png(grid_image(images, [names[i] for i in wanted], title), str(args.out))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write --out {args.out}: {str(err).splitlines()[0]}") from None
    print(f"wrote {args.out}: {len(labels)} images ({len(wanted)} classes x {args.num_samples}) in {elapsed:.2f} s, "
          f"{len(labels) / elapsed:.1f} images/s ({args.sampler}, {args.steps} steps, cfg {args.cfg_scale:g})")
    if args.score:
        from blueberry.platform.data import open_for

        data = open_for(run.task, args.data, progress=False)
        if data.manifest.preparation_key != recorded["preparation_key"]:
            raise UserError(f"--data {args.data} is not the data {run.name} trained on ({recorded['source']}): "
                            "pass that data with --data")
        scorer = run.task.scorer(data, torch.device(args.device))
        stats, correct = scorer.score(images, labels)
        print(f"judged       {correct.item() / len(labels):.1%} recognised as their class; FID {scorer.fid(stats):.2f} "
              f"({len(labels)} samples, {scorer.record['trained_on']}-trained judge, "
              f"{scorer.record['val_accuracy']:.1%} on held-out images)")


def generate_coded_images(args: Any, run: Any, sampling: Any) -> None:
    """A language model over text and image codes: --num-samples images per prompt (every caption without
    --prompt), their codes sampled after the caption, decoded by the VQ-VAE the data recorded, written to --out
    as a grid with a row per prompt; with --score, judged as an image run's samples are."""
    import time

    import torch

    from blueberry.models.dit.samples import grid_image, save_png
    from blueberry.models.lm.generate import Generator
    from blueberry.models.lm.multimodal import (copied_fraction, decode_codes, encode_images, generate_codes,
                                                load_visual_tokenizer, recorded_layout, score_images)

    layout = recorded_layout(run.saved.data, run.model.cfg.vocab_size)
    if args.out is None:
        raise UserError(f"{run.name} generates images after a caption: pass --out FILE.png")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: directory {args.out.parent} does not exist")
    if args.classes:
        raise UserError(f"{run.name} is prompted with captions, not --class: e.g. --prompt {layout.captions[-1]!r}")
    prompts = args.prompt or list(layout.captions)
    unknown = [p for p in prompts if p not in layout.captions]
    if args.score and unknown:
        raise UserError(f"--score judges images of the data's classes: prompt with its captions "
                        f"({', '.join(layout.captions)}), not {', '.join(map(repr, unknown))}")
    if unknown:
        print(f"{PROG}: note: {', '.join(map(repr, unknown))} is not a caption the run was trained on "
              f"({', '.join(layout.captions)})", file=sys.stderr)
    vq = load_visual_tokenizer(layout, args.device, args.visual_tokenizer)
    tokenizer = run.tokenizer
    ids = [p for p in tokenizer.encode_batch(prompts) for _ in range(args.num_samples)]
    started = time.perf_counter()
    codes = generate_codes(Generator(run.model), layout, ids, tokenizer.eos_id, sampling, args.seed)
    images = decode_codes(vq, codes)
    elapsed = time.perf_counter() - started
    title = f"{run.name}: temperature {sampling.temperature:g}"
    title += f", top-k {sampling.top_k}" if sampling.top_k else ""
    try:
        save_png(grid_image(images, prompts, title), str(args.out))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write --out {args.out}: {str(err).splitlines()[0]}") from None
    print(f"wrote {args.out}: {len(ids)} images ({len(prompts)} prompt{'s' * (len(prompts) > 1)} x "
          f"{args.num_samples}) in {elapsed:.2f} s, "
          f"{len(ids) / elapsed:.1f} images/s ({layout.codes_per_image} codes each)")
    if args.score:
        from blueberry.platform.data import open_images

        data = open_images(args.data, progress=False)
        if data.manifest.preparation_key != layout.encoder.get("images_key"):
            raise UserError(f"--data {args.data} is not the image data the run's tokens were encoded from "
                            f"({layout.encoder.get('images', '?')}): pass that data with --data")
        labels = torch.tensor([layout.captions.index(p) for p in prompts]).repeat_interleave(args.num_samples)
        score = score_images(images, labels, data, torch.device(args.device))
        print(f"judged       {score['class_accuracy']:.1%} recognised as their class; FID {score['fid']:.2f} "
              f"({len(labels)} samples, {score['judge_trained_on']}-trained judge, "
              f"{score['judge_val_accuracy']:.1%} on held-out images)")
        training = encode_images(vq, data.split_arrays("train")[0], args.device)
        print(f"copies       {copied_fraction(codes, training):.1%} of the samples are a training image's code grid "
              "exactly (memorised rather than composed)")


def reconstruct_images(args: Any, run: Any) -> None:
    """A VQ-VAE: --num-samples held-out images of each class beside their reconstructions through the codes,
    written to --out (a row per class); with --score, the reconstructions of every held-out image judged."""
    import numpy as np
    import torch

    from blueberry.models.dit.samples import grid_image, save_png
    from blueberry.models.lm.multimodal import score_images
    from blueberry.models.vqvae.model import to_model_units, to_uint8
    from blueberry.platform.data import open_images

    if args.out is None:
        raise UserError(f"{run.name} is a VQ-VAE: it draws held-out images and their reconstructions; pass "
                        "--out FILE.png (and --data, the images it trained on)")
    if args.prompt:
        raise UserError(f"{run.name} is a VQ-VAE: it reconstructs images, it takes no --prompt")
    data = open_images(args.data, progress=False)
    recorded = run.saved.data.get("images") or {}
    if data.manifest.preparation_key != recorded.get("preparation_key"):
        raise UserError(f"--data {args.data} is not the data {run.name} trained on ({recorded.get('source', '?')}): "
                        "pass that data with --data")
    images, labels = data.split_arrays("val")
    with torch.no_grad():
        out = run.model(to_model_units(torch.from_numpy(images).to(args.device)))
    reconstructions = to_uint8(out.reconstruction).cpu()
    names = list(data.manifest.classes)
    rows = [np.flatnonzero(labels == c)[:args.num_samples] for c in range(len(names))]
    if any(len(r) < args.num_samples for r in rows):
        raise UserError(f"--num-samples {args.num_samples}: some class has fewer held-out images; ask for fewer")
    picture = torch.cat([torch.cat([torch.from_numpy(images[r]), reconstructions[r]]) for r in rows])
    try:
        save_png(grid_image(picture, names, f"{run.name}: held-out images | their reconstructions"), str(args.out))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot write --out {args.out}: {str(err).splitlines()[0]}") from None
    print(f"wrote {args.out}: {args.num_samples} held-out images of each of {len(names)} classes and their "
          "reconstructions")
    if args.score:
        x = torch.from_numpy(images).double() / 255
        mse = ((reconstructions.double() / 255 - x) ** 2).mean().item()
        codes = torch.bincount(out.codes.flatten().cpu(), minlength=run.model.cfg.codebook_size)
        recon = score_images(reconstructions, torch.from_numpy(labels), data, torch.device(args.device))
        real = score_images(torch.from_numpy(images), torch.from_numpy(labels), data, torch.device(args.device))
        print(f"reconstructed {len(images)} held-out images: PSNR {10 * np.log10(1 / mse):.2f} dB (uint8), "
              f"{(codes > 0).double().mean().item():.1%} of the codes used")
        print(f"judged       reconstructions {recon['class_accuracy']:.1%} recognised, FID {recon['fid']:.2f}; the "
              f"held-out images themselves {real['class_accuracy']:.1%}, FID {real['fid']:.2f}")


def class_index(text: str, names: list[str]) -> int:
    """A --class value: a class name, else an index."""
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise UserError(f"--class {text!r} names no class of this run; its classes: {', '.join(names)}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
