"""Class-conditional image generation: a flow-matching Diffusion Transformer (DiT) trained on image shards."""
