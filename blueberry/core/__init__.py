"""The core: the training loop, hooks, events, optimizer, checkpoints and run identity, in plain PyTorch.

Nothing here imports Ray or MLflow, or names a model kind (see docs/architecture.md)."""
