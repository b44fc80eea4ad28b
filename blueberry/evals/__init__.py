"""Scoring trained runs: a kind's evaluation or, for a kind that declares none, its Task's own on the data
(`validation.py`); downstream tasks while a model trains (`downstream.py`); EleutherAI's lm-evaluation-harness
on any run whose kind can score text (`harness.py`). No Ray, no MLflow, no model kind named."""
