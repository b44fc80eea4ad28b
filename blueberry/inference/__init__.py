"""A trained run opened for inference (its model and the tokenizer it was trained with), and what its kind can
do with it (`capabilities.py`). Plain PyTorch: no Ray, no MLflow, no model kind named."""
