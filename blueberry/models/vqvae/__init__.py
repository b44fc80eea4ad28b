"""A visual tokenizer: a VQ-VAE that turns images into a grid of discrete codes and back."""
