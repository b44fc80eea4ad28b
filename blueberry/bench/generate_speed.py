"""Decode speed: Blueberry's generation engine, eager and compiled (`CompiledGenerator`: a fixed-size cache,
one graph a step), against transformers' `generate` on the same weights exported
(`blueberry.models.lm.export.to_hf`: Qwen3 for SwiGLU, Apertus for relu2), greedy, the same prompts, the same
number of new tokens (no EOS stop) and the same threads, interleaved in one process so machine noise falls on
all of them.

    python -m blueberry.bench.generate_speed --preset small --batch 1 8 --new-tokens 128
    python -m blueberry.bench.generate_speed --preset tiny --batch 1 8 --compiled --threads 1

Reports decode tokens per second (new tokens x batch / wall time of the whole call, prefill included) for each
engine and the ratios, the median of `--repeats` interleaved rounds after one warm-up each (the compiled
engine's first call compiles; its time is printed apart), and whether the engines produced the same tokens.
`blueberry.bench.gpu` measures the same on a GPU with these functions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from blueberry.core.config import replace
from blueberry.models.lm.config import preset
from blueberry.models.lm.export import to_hf
from blueberry.models.lm.generate import CompiledGenerator, Generator, Sampling
from blueberry.models.lm.model import Blueberry

Engine = Callable[[torch.Tensor], torch.Tensor]  # prompts (B, P) -> new tokens (B, N), on the CPU


def hf_model(model: Blueberry, directory: Path) -> torch.nn.Module:
    """`model` exported to `directory` and loaded by transformers, on the model's device and in its dtype."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    param = next(model.parameters())
    state = {k: v.float().cpu() for k, v in model.state_dict().items()}
    checkpoint = to_hf(model.cfg, state)
    (directory / "config.json").write_text(json.dumps(checkpoint.config))
    save_file({k: v.contiguous() for k, v in checkpoint.weights.items()}, str(directory / "model.safetensors"))
    return AutoModelForCausalLM.from_pretrained(str(directory)).to(device=param.device, dtype=param.dtype).eval()


def engines(model: Blueberry, new_tokens: int, max_len: int, reference: torch.nn.Module | None = None,
            compiled: bool = True) -> dict[str, Engine]:
    """The engines to time by name ("eager", "compiled", "transformers"), each decoding `new_tokens` greedily."""
    greedy = Sampling(temperature=0)

    def ours(engine: Generator) -> Engine:
        return lambda prompts: torch.tensor(engine.generate(prompts.tolist(), new_tokens, greedy))

    out = {"eager": ours(Generator(model))}
    if compiled:
        out["compiled"] = ours(CompiledGenerator(model, max_len=max_len))
    if reference is not None:
        def theirs(prompts: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                ids = reference.generate(prompts.to(reference.device), max_new_tokens=new_tokens,
                                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            return ids[:, prompts.shape[1]:].cpu()  # .cpu() waits for the device: the clock stops after the work
        out["transformers"] = theirs
    return out


@dataclass(frozen=True)
class Timing:
    """One batch size's decode: tokens/s of each engine (median of the rounds), the first call's seconds (the
    compiled engine compiles in it), and which engines produced the eager engine's tokens."""

    batch: int
    tokens_per_s: dict[str, float]
    first_call_s: dict[str, float]
    same_tokens: dict[str, bool]


def time_engines(calls: dict[str, Engine], prompts: torch.Tensor, new_tokens: int, repeats: int) -> Timing:
    """One warm-up call of each engine, then `repeats` rounds calling each in turn."""
    first: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name, call in calls.items():
        start = time.perf_counter()
        outputs[name] = call(prompts)
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(prompts)
            times[name].append(time.perf_counter() - start)
    batch = len(prompts)
    return Timing(batch=batch,
                  tokens_per_s={name: batch * new_tokens / statistics.median(t) for name, t in times.items()},
                  first_call_s=first,
                  same_tokens={name: bool(torch.equal(out, outputs["eager"])) for name, out in outputs.items()})


def random_prompts(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--mlp", choices=["relu2", "swiglu"], help="override the preset's MLP")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compiled", action="store_true", help="also time the compiled engine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    if args.mlp:
        cfg = replace(cfg, mlp=args.mlp)
    model = Blueberry(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference = hf_model(model, Path(tmp))
    calls = engines(model, args.new_tokens, args.prompt_tokens + args.new_tokens, reference, args.compiled)
    names = list(calls)
    print(f"{args.preset} ({cfg.mlp}, {sum(p.numel() for p in model.parameters()):,} parameters) against "
          f"{type(reference).__name__}; {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats}")
    ratios = [n for n in names if n != "transformers"]
    print(f"{'batch':>5} " + " ".join(f"{n + ' tok/s':>18}" for n in names)
          + " " + " ".join(f"{n + '/transformers':>22}" for n in ratios) + "  same tokens")
    for batch in args.batch:
        timing = time_engines(calls, random_prompts(batch, args.prompt_tokens, cfg.vocab_size), args.new_tokens,
                              args.repeats)
        rate = timing.tokens_per_s
        print(f"{batch:>5} " + " ".join(f"{rate[n]:>18,.0f}" for n in names)
              + " " + " ".join(f"{rate[n] / rate['transformers']:>22.2f}" for n in ratios)
              + f"  {all(timing.same_tokens.values())}"
              + (f"  (compiled's first call {timing.first_call_s['compiled']:.1f} s)" if "compiled" in rate else ""))


if __name__ == "__main__":
    main()
