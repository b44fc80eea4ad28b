"""`blueberry-data`: prepare, verify and inspect token-data directories.

    blueberry-data prepare --source builtin --out data/builtin --seq-len 256
    blueberry-data prepare --recipe speedrun-40m --out data/speedrun-40m
    blueberry-data prepare --source local:corpus/*.jsonl --tokenizer HuggingFaceTB/SmolLM2-135M --out data/mine
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
from blueberry.data.tokens import TokenShards
from blueberry.errors import UserError
from blueberry.platform.data import HUB_TOKENIZER, PrepareConfig, load_tokenizer, prepare, recipe

PROG = "blueberry-data"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Prepare and check token data.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    prep = commands.add_parser("prepare", help="tokenise a source into Arrow shards + manifest")
    prep.add_argument("--source", help="builtin (default), local:<path or glob>, or hf:<dataset>[:<config>][@<split>]")
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


def describe(directory: Path, samples: int = 3, sample_tokens: int = 40) -> str:
    """Counts, tokenizer and decoded samples, after checking every checksum: never samples of damaged data."""
    data = TokenShards.open(directory, verify=True)
    m = data.manifest
    lines = [f"directory   {directory}", f"source      {m.source}",
             f"tokenizer   {m.tokenizer.name} (vocab {m.tokenizer.vocab_size}, sha256 {m.tokenizer.sha256[:12]})",
             f"seq_len     {m.seq_len} ({m.dtype})"]
    lines += [f"{name:<11} {s.tokens:,} tokens in {s.sequences:,} sequences, {len(s.files)} shards"
              for name, s in m.splits.items()]
    try:
        tokenizer = load_tokenizer(m.tokenizer.name)
    except UserError:
        return "\n".join(lines + ["(tokenizer not loadable here: samples not decoded)"])
    if tokenizer.sha256 != m.tokenizer.sha256:
        return "\n".join(lines + ["(the tokenizer of that name here differs from the one that prepared the data: "
                                  "samples not decoded)"])
    stream = data.train_stream(samples, seed=0)
    for row in stream.next()[:, :sample_tokens].tolist():
        lines.append(f"sample      {tokenizer.decode(row)!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
