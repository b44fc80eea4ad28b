"""The language model: Blueberry transformers trained on next-token prediction."""
