"""Blueberry: train small language models from scratch, sweep them, and plan a big one."""

__version__ = "0.1.0"
