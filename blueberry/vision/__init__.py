"""What the image kinds share: pixels and model units, labelled sample grids, the judge (a classifier that
says what a generated image shows) and FID. The DiT, the VQ-VAE and the language model over image codes
all score images here, the same way."""
