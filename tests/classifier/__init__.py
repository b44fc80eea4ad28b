"""A fifth model kind, added by a test and nowhere else: a small image classifier on the built-in digits.

Everything a kind is lives in this folder: its config and presets (`config.py`), its model (`model.py`), its
`Task`, registered when the package is imported (`task.py`), and the test that puts it through the platform
(`test_fifth_kind.py`). No file outside the folder names it. Its repeated layers are in `model.mixers`, not
`model.blocks`: FSDP, activation checkpointing and Muon find them because the Task says where they are.
It declares no capabilities, so `blueberry-eval` scores it with its Task's own evaluation and
`blueberry-generate` and `blueberry-export` refuse it in one line.

It is a package so that Ray ships it to workers (the test cluster sends every package under tests/) and
importing it there registers the kind.
"""

from classifier.task import ClassifierTask  # noqa: F401  (importing the package registers the kind)
