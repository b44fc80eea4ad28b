"""`blueberry-data`: prepare, verify and inspect token-data directories.

    blueberry-data prepare --source builtin --out data/builtin --seq-len 256
    blueberry-data verify data/builtin
    blueberry-data info data/builtin
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from blueberry.cli.common import ArgumentParser, positive_int, run_command
from blueberry.data import TokenShards
from blueberry.errors import UserError

PROG = "blueberry-data"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Prepare and check token data.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    prep = commands.add_parser("prepare", help="tokenise a source into Arrow shards + manifest")
    prep.add_argument("--source", default="builtin", help="what to read: builtin (default)")
    prep.add_argument("--tokenizer", default="builtin",
                      help="builtin, a tokenizer.json, a saved tokenizer directory, or a hub name")
    prep.add_argument("--out", required=True, type=Path, help="output directory")
    prep.add_argument("--seq-len", type=positive_int, default=2048)
    prep.add_argument("--tokens", type=positive_int, help="stop after this many tokens")
    prep.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out")
    prep.add_argument("--seed", type=int, default=0, help="decides which documents are held out")
    for name, helptext in (("verify", "check every shard's sha256 and the manifest's counts"),
                           ("info", "print counts, tokenizer and a few decoded samples")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("directory", type=Path)
    return parser


def main_body(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        from pipelines.prepare import PrepareConfig, prepare

        cfg = PrepareConfig(source=args.source, tokenizer=args.tokenizer, seq_len=args.seq_len,
                            val_fraction=args.val_fraction, max_tokens=args.tokens, seed=args.seed)
        manifest = prepare(cfg, args.out)
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
    data = TokenShards.open(directory, verify=False)
    m = data.manifest
    lines = [f"directory   {directory}", f"source      {m.source}",
             f"tokenizer   {m.tokenizer.name} (vocab {m.tokenizer.vocab_size}, sha256 {m.tokenizer.sha256[:12]})",
             f"seq_len     {m.seq_len} ({m.dtype})"]
    lines += [f"{name:<11} {s.tokens:,} tokens in {s.sequences:,} sequences, {len(s.files)} shards"
              for name, s in m.splits.items()]
    try:
        from pipelines.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(m.tokenizer.name)
    except UserError:
        return "\n".join(lines + ["(tokenizer not loadable here: samples not decoded)"])
    stream = data.train_stream(samples, seed=0)
    for row in stream.next()[:, :sample_tokens].tolist():
        lines.append(f"sample      {tokenizer.decode(row)!r}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
