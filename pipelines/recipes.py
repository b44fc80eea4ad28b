"""Named preparations: the lab's standard datasets, spelled out once."""

from __future__ import annotations

from blueberry.errors import UserError
from pipelines.prepare import PrepareConfig

HUB_DATASET = "hf:vukrosic/blueberry-1B-pretrain"
HUB_TOKENIZER = "HuggingFaceTB/SmolLM2-135M"

RECIPES: dict[str, PrepareConfig] = {
    # The speedrun subset: the dataset's first 25,000 documents (about 40M tokens), 5% held out.
    "speedrun-40m": PrepareConfig(source=HUB_DATASET, tokenizer=HUB_TOKENIZER, seq_len=2048, max_documents=25_000),
    # The marathon: 1B training tokens plus a 1% validation share.
    "marathon-1b": PrepareConfig(source=HUB_DATASET, tokenizer=HUB_TOKENIZER, seq_len=2048, val_fraction=0.01,
                                 max_tokens=1_012_000_000),
}


def recipe(name: str) -> PrepareConfig:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
