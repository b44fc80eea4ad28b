"""The platform: MLflow tracking, Ray Tune sweeps, Ray Train runs, study reports. The only layer that
imports Ray or MLflow, and (through `data.py`) the pipelines."""
