"""Tokenisation throughput: Blueberry's encoder against `datasets.Dataset.map` with the tokenizer (batched),
the straightforward way the old project prepared data. Same documents, same tokenizer, same cores.

    python -m pipelines.bench --repeat 8 --workers 2
    python -m pipelines.bench --read DIR            # shard read throughput instead

Documents are the built-in corpus repeated `--repeat` times (offline; any fast tokenizer behaves
alike). Both sides produce token ids for every document; neither writes shards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pyarrow.compute as pc
import torch

from blueberry.data.corpus import builtin_documents
from blueberry.data.tokenizer import load_tokenizer
from blueberry.data.tokens import TokenShards
from pipelines.encode import make_encoder
from pipelines.prepare import ENCODE_BATCH_DOCS, _batched


def baseline_tokens_per_s(docs: list[str], tokenizer_json_path: str) -> tuple[float, int]:
    import datasets
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json_path, eos_token="<|endoftext|>")
    with tempfile.TemporaryDirectory() as cache:
        dataset = datasets.Dataset.from_dict({"text": docs})
        start = time.perf_counter()
        tokenized = dataset.map(lambda batch: hf_tokenizer(batch["text"]), batched=True, remove_columns=["text"],
                                cache_file_name=os.path.join(cache, "tokenized.arrow"))
        elapsed = time.perf_counter() - start
        # Counted outside the clock, in Arrow, so the baseline pays nothing for the harness.
        tokens = pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py()
    return tokens / elapsed, tokens


def ours_tokens_per_s(docs: list[str], tokenizer_json: str, workers: int) -> tuple[float, int]:
    encoder = make_encoder(tokenizer_json, workers, backend="local")
    try:
        list(encoder.encode(iter([docs[:8]])))  # start the workers before the clock
        start = time.perf_counter()
        tokens = sum(len(ids) for batch in encoder.encode(_batched(iter(docs), ENCODE_BATCH_DOCS)) for ids in batch)
        elapsed = time.perf_counter() - start
    finally:
        encoder.close()
    return tokens / elapsed, tokens


def read_tokens_per_s(data: TokenShards, batch_size: int = 8, seconds: float = 2.0) -> float:
    """Training tokens per second that `TokenShards` delivers as (inputs, targets) batches, on one thread."""
    stream = data.train_stream(batch_size, seed=0)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = stream.next()
        tokens += batch[:, 1:].numel()  # the targets; inputs are the other view of the same batch
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--read", metavar="DIR", help="measure shard reads from a prepared directory instead")
    args = parser.parse_args()
    if args.read:
        torch.set_num_threads(1)
        data = TokenShards.open(args.read)
        for batch_size in (8, 32):
            print(f"batch {batch_size:3d} x {data.seq_len}: {read_tokens_per_s(data, batch_size):14,.0f} tokens/s")
        return
    docs = list(builtin_documents()) * args.repeat
    tokenizer = load_tokenizer("builtin")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(tokenizer.backend.to_str())
    base_rate, base_tokens = baseline_tokens_per_s(docs, f.name)
    our_rate, our_tokens = ours_tokens_per_s(docs, tokenizer.backend.to_str(), args.workers)
    os.unlink(f.name)
    assert base_tokens == our_tokens, (base_tokens, our_tokens)  # the same work on both sides
    print(f"documents {len(docs):,}, tokens {our_tokens:,}, cores {os.cpu_count()}, workers {args.workers}")
    print(f"baseline  datasets.Dataset.map(batched=True): {base_rate:12,.0f} tokens/s")
    print(f"blueberry encoder ({args.workers} workers):          {our_rate:12,.0f} tokens/s")
    print(f"ratio     {our_rate / base_rate:.2f}x")


if __name__ == "__main__":
    main()
