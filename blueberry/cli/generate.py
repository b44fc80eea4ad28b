"""blueberry-generate: sample a trained run, with the tokenizer it was trained with.

    blueberry-generate --run tiny-2m --prompt "Once upon a time" --max-new-tokens 100
    blueberry-generate --run tiny-2m --prompt "The" --prompt "A" --num-samples 3 --temperature 0.8 --top-p 0.95

One sequence streams to the terminal as it is produced; several (prompts x samples) decode together
in one batch and print in order, each under a header.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from blueberry.cli.common import (ArgumentParser, non_empty, non_negative_float, non_negative_int, positive_float,
                                  positive_int, run_command, seed)

PROG = "blueberry-generate"


def build_parser() -> ArgumentParser:
    from blueberry.platform.inference import add_run_flags

    parser = ArgumentParser(prog=PROG, description="Sample text from a trained run.")
    add_run_flags(parser)
    parser.add_argument("--prompt", action="append", type=non_empty, required=True,
                        help="text to continue (repeatable: one batch)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens to generate at most")
    parser.add_argument("--temperature", type=non_negative_float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=non_negative_int, default=0,
                        help="sample from the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=positive_float, default=1.0,
                        help="sample from the most likely tokens holding this much probability (1: all)")
    parser.add_argument("--num-samples", type=positive_int, default=1, help="samples per prompt")
    parser.add_argument("--seed", type=seed, default=0, help="seeds the sampling")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def main_body(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    from blueberry.models.lm.generate import Generator, Sampling, continuation
    from blueberry.platform.inference import open_run

    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    run = open_run(args.run, args.runs_dir, args.checkpoint, args.device, args.tokenizer)
    tokenizer = run.tokenizer
    prompts = [ids for ids in tokenizer.encode_batch(args.prompt) for _ in range(args.num_samples)]
    labels = [(p, s) for p in range(len(args.prompt)) for s in range(args.num_samples)]
    engine = Generator(run.model, eos_id=tokenizer.eos_id)
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, main_body, argv)


if __name__ == "__main__":
    sys.exit(main())
