"""Decode speed: Blueberry's generation engine against transformers' `generate` on the same weights
exported (`blueberry.models.lm.export.to_hf`: Qwen3 for SwiGLU, Apertus for relu2), greedy, the same
prompts, the same number of new tokens (no EOS stop) and the same threads, interleaved in one
process so machine noise falls on both.

    python -m blueberry.bench.generate_speed --preset small --batch 1 8 --new-tokens 128

Reports decode tokens per second (new tokens x batch / wall time of the whole call, prefill
included) for each engine and their ratio, the median of `--repeats` interleaved rounds after one
warm-up each, and checks that both engines produced the same tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from blueberry.models.lm.config import preset
from blueberry.models.lm.export import to_hf
from blueberry.models.lm.generate import Generator, Sampling
from blueberry.models.lm.model import Blueberry


def hf_model(model: Blueberry, directory: Path) -> torch.nn.Module:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    checkpoint = to_hf(model.cfg, model.state_dict())
    (directory / "config.json").write_text(json.dumps(checkpoint.config))
    save_file({k: v.contiguous() for k, v in checkpoint.weights.items()}, str(directory / "model.safetensors"))
    return AutoModelForCausalLM.from_pretrained(str(directory)).eval()


def timed(call) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--mlp", choices=["relu2", "swiglu"], help="override the preset's MLP")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = preset(args.preset)
    if args.mlp:
        cfg = type(cfg)(**{**cfg.__dict__, "mlp": args.mlp})
    model = Blueberry(cfg).eval()
    engine = Generator(model)
    with tempfile.TemporaryDirectory() as tmp:
        reference = hf_model(model, Path(tmp))
    print(f"{args.preset} ({cfg.mlp}, {sum(p.numel() for p in model.parameters()):,} parameters) against "
          f"{type(reference).__name__}; {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'batch':>5} {'blueberry tok/s':>16} {'transformers tok/s':>19} {'ratio':>6}  same tokens")
    for batch in args.batch:
        prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_tokens),
                                generator=torch.Generator().manual_seed(1))

        def ours():
            return torch.tensor(engine.generate(prompts.tolist(), args.new_tokens, Sampling(temperature=0)))

        def theirs():
            with torch.inference_mode():
                out = reference.generate(prompts, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                         do_sample=False, eos_token_id=None, pad_token_id=0)
            return out[:, args.prompt_tokens:]

        ours(), theirs()  # warm-up
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for name, call in (("ours", ours), ("theirs", theirs)):
                seconds, outputs[name] = timed(call)
                times[name].append(seconds)
        rate = {name: batch * args.new_tokens / statistics.median(t) for name, t in times.items()}
        same = bool(torch.equal(outputs["ours"], outputs["theirs"]))
        ratio = rate["ours"] / rate["theirs"]
        print(f"{batch:>5} {rate['ours']:>16,.0f} {rate['theirs']:>19,.0f} {ratio:>6.2f}  {same}")


if __name__ == "__main__":
    main()
