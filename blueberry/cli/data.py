"""`blueberry-data`: prepare, verify and inspect token-data directories.

    blueberry-data prepare --source builtin --out data/builtin --seq-len 256
    blueberry-data prepare --recipe speedrun-40m --out data/speedrun-40m
    blueberry-data prepare --source local:corpus/*.jsonl --tokenizer HuggingFaceTB/SmolLM2-135M --out data/mine
    blueberry-data prepare --source vq:VQ_RUN --images builtin --out data/mm-digits    # images as VQ-VAE codes
    blueberry-data verify data/builtin
    blueberry-data info data/builtin
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, positive_int, run_command
from blueberry.data.format import Manifest
from blueberry.data.tokens import TokenShards
from blueberry.errors import UserError
from blueberry.data.tokenizer import load_tokenizer
from blueberry.platform.data import HUB_TOKENIZER, PrepareConfig, prepare, recipe

PROG = "blueberry-data"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Prepare and check token data.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    prep = commands.add_parser("prepare", help="tokenise a source into Arrow shards + manifest")
    prep.add_argument("--source", help="builtin (default), local:<path or glob>, hf:<dataset>[:<config>][@<split>], "
                                       "or vq:RUN (images as a VQ-VAE's codes, with --images)")
    prep.add_argument("--recipe", help="a named preparation: speedrun-40m, marathon-1b (flags given override it)")
    prep.add_argument("--tokenizer", help="builtin, a tokenizer.json, a saved tokenizer directory, or a hub name "
                                          "(default: builtin for builtin, HuggingFaceTB/SmolLM2-135M otherwise)")
    prep.add_argument("--out", required=True, type=Path, help="output directory")
    prep.add_argument("--seq-len", type=positive_int, help="tokens per training sequence (default 2048)")
    prep.add_argument("--tokens", type=positive_int, help="stop after this many tokens")
    prep.add_argument("--documents", type=positive_int, help="read at most this many documents")
    prep.add_argument("--val-fraction", type=float, help="share of documents held out (default 0.05)")
    prep.add_argument("--seed", type=int, help="decides which documents are held out (default 0)")
    prep.add_argument("--text-field", help="JSON field / Parquet column / dataset column holding the text")
    prep.add_argument("--shard-tokens", type=positive_int, help="tokens per shard file (default 16M)")
    prep.add_argument("--dtype", choices=("auto", "uint16", "uint32"), help="token dtype (default auto)")
    prep.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 1)),
                      help="tokenizer processes (default: one per core)")
    prep.add_argument("--backend", choices=("auto", "local", "ray"), default="auto",
                      help="local process pool, or Ray Data on the connected cluster (auto: ray when connected)")
    visual = prep.add_argument_group("multimodal data (--source vq:RUN: a VQ-VAE run's name, run directory or "
                                     "checkpoint)")
    visual.add_argument("--images", help="the images to encode: builtin (the digits), local:DIR, hf:DATASET or a "
                                         "prepared image directory")
    visual.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    visual.add_argument("--device", default="cpu", help="where the VQ-VAE encodes: cpu, cuda or cuda:N")
    for name, helptext in (("verify", "check every shard's sha256 and the manifest's counts"),
                           ("info", "check checksums, then print counts, tokenizer and a few decoded samples")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("directory", type=Path)
    return parser


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    """A recipe (or the defaults) with the flags the user gave on top."""
    base = recipe(args.recipe) if args.recipe else PrepareConfig()
    given = {"source": args.source, "tokenizer": args.tokenizer, "seq_len": args.seq_len, "max_tokens": args.tokens,
             "max_documents": args.documents, "val_fraction": args.val_fraction, "seed": args.seed,
             "text_field": args.text_field, "dtype": args.dtype, "shard_tokens": args.shard_tokens}
    changes = {k: v for k, v in given.items() if v is not None}
    source = changes.get("source", base.source)
    if "tokenizer" not in changes and not args.recipe:
        changes["tokenizer"] = "builtin" if source == "builtin" else HUB_TOKENIZER
    return dataclasses.replace(base, **changes)


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        if (args.source or "").startswith(VISUAL_SOURCE):
            manifest = prepare_visual(args)
        else:
            manifest = prepare(prepare_config(args), args.out, workers=args.workers, backend=args.backend)
        print(f"{args.out}: {manifest.splits['train'].tokens:,} train and {manifest.splits['val'].tokens:,} "
              f"validation tokens, seq_len {manifest.seq_len}, tokenizer {manifest.tokenizer.name}")
    elif args.command == "verify":
        data = TokenShards.open(args.directory, verify=True)
        files = sum(len(s.files) for s in data.manifest.splits.values())
        print(f"{args.directory}: OK ({files} shards, checksums and row counts match the manifest)")
    else:
        print(describe(args.directory))
    return 0


VISUAL_SOURCE = "vq:"
VISUAL_SEQ_LEN = 64  # mm-tiny's: about three captioned 4x4 code grids a row


def prepare_visual(args: argparse.Namespace) -> Manifest:
    """`--source vq:RUN --images DATA`: every image of DATA encoded by the VQ-VAE run RUN, each a document
    `[BOS] caption <seg_start> codes <seg_end>` in token shards whose manifest records the vocabulary layout."""
    from blueberry.data.format import TokenizerInfo, sha256_file
    from blueberry.inference.run import open_run
    from blueberry.models.lm.multimodal import check_visual_tokenizer, image_documents, visual_vocab, vocab_size
    from blueberry.platform.data import documents_key, open_images, prepare_documents

    spec = args.source[len(VISUAL_SOURCE):]
    if not spec:
        raise UserError("--source vq:RUN names a trained VQ-VAE: its run name, run directory or checkpoint")
    if not args.images:
        raise UserError("--source vq:RUN encodes images: pass --images DATA (builtin, local:DIR, hf:DATASET or a "
                        "prepared image directory)")
    given = {"--recipe": args.recipe, "--tokens": args.tokens, "--documents": args.documents,
             "--val-fraction": args.val_fraction, "--seed": args.seed, "--text-field": args.text_field,
             "--dtype": args.dtype}
    if unused := [flag for flag, value in given.items() if value is not None]:
        raise UserError(f"{', '.join(unused)} do not apply to --source vq: (every image is a document, split as "
                        "the image data is)")
    path = Path(spec)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    vq = open_run(checkpoint=path, device=args.device) if path.exists() else \
        open_run(spec, args.runs_dir, device=args.device)
    check_visual_tokenizer(vq.model, f"{spec} (a {vq.task.kind!r} run)")
    images = open_images(args.images)
    vq.task.check_data(images)
    text = load_tokenizer(args.tokenizer or "builtin")
    seq_len = args.seq_len or VISUAL_SEQ_LEN
    checkpoint_sha = sha256_file(vq.checkpoint)
    encoder = {"run": vq.name, "checkpoint": str(vq.checkpoint.resolve()), "sha256": checkpoint_sha,
               "step": vq.saved.step, "images": images.manifest.source,
               "images_key": images.manifest.preparation_key}
    layout = visual_vocab(text.vocab_size, vq.model, images.manifest.classes, encoder)
    captions = text.encode_batch(list(layout.captions))
    info = TokenizerInfo(name=text.name, vocab_size=vocab_size(layout), sha256=text.sha256, eos_id=text.eos_id,
                         visual=layout)
    shard_tokens = args.shard_tokens or 1 << 24
    key = documents_key({"images": images.manifest.preparation_key, "visual_tokenizer": checkpoint_sha,
                         "tokenizer": text.sha256, "seq_len": seq_len, "shard_tokens": shard_tokens,
                         "captions": list(layout.captions), "code_offset": layout.code_offset})
    return prepare_documents(args.out, lambda: image_documents(vq.model, images, layout, captions, text.eos_id,
                                                               args.device),
                             info, seq_len, key, source=args.source, shard_tokens=shard_tokens)


def describe(directory: Path, samples: int = 3, sample_tokens: int = 40) -> str:
    """Counts, tokenizer and decoded samples, after checking every checksum: never samples of damaged data."""
    data = TokenShards.open(directory, verify=True)
    m = data.manifest
    lines = [f"directory   {directory}", f"source      {m.source}",
             f"tokenizer   {m.tokenizer.name} (vocab {m.tokenizer.vocab_size}, sha256 {m.tokenizer.sha256[:12]})",
             f"seq_len     {m.seq_len} ({m.dtype})"]
    lines += [f"{name:<11} {s.tokens:,} tokens in {s.sequences:,} sequences, {len(s.files)} shards"
              for name, s in m.splits.items()]
    if (v := m.tokenizer.visual) is not None:
        lines += [f"images      {v.grid[0]}x{v.grid[1]} codes of {v.codebook_size} (tokens {v.code_offset}.."
                  f"{v.code_offset + v.codebook_size - 1}, markers {v.seg_start} {v.seg_end}) from VQ-VAE run "
                  f"{v.encoder.get('run', '?')}", f"captions    {', '.join(v.captions)}"]
    try:
        tokenizer = load_tokenizer(m.tokenizer.name)
    except UserError:
        return "\n".join(lines + ["(tokenizer not loadable here: samples not decoded)"])
    if tokenizer.sha256 != m.tokenizer.sha256:
        return "\n".join(lines + ["(the tokenizer of that name here differs from the one that prepared the data: "
                                  "samples not decoded)"])
    stream = data.train_stream(samples, seed=0)
    for row in stream.next()[:, :sample_tokens].tolist():
        if m.tokenizer.visual is not None:  # image codes decode to no text: show where they are
            from blueberry.models.lm.multimodal import render

            lines.append(f"sample      {render(row, m.tokenizer.visual, tokenizer.decode)!r}")
            continue
        lines.append(f"sample      {tokenizer.decode(row)!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
