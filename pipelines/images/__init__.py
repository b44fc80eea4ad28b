"""Image data: sources (`sources.py`) -> uint8 image shards + manifest (`prepare.py`, the format is
`blueberry.data.images`). `python -m pipelines.images --source SRC --out DIR` prepares a directory."""
