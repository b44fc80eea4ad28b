"""A trained run handed to another library: the directory `blueberry-export` writes (`directory.py`) around the
model its kind's `Export` capability converts. No Ray, no MLflow, no model kind named."""
