"""Images as tokens for the language model: a VQ-VAE's codes inside the token stream.

The autoregressive model over text and images is a plain Blueberry language model whose vocabulary
holds, after the text tokenizer's ids, two segment markers and the VQ-VAE's codebook
(`blueberry.data.format.VisualVocab`): code c is token `code_offset + c`. Each image becomes one
document, `[BOS] caption <seg_start> codes <seg_end>`, its caption from the class name ("a seven") and
its codes in row-major order; the text tokenizer's end-of-text token is both BOS and EOS (it ends one
document and begins the next), as in GPT-2. Training needs nothing more: the loop sees token rows.

Generation prompts `[BOS] caption <seg_start>` and then allows only codes for as many steps as the grid
holds, then only `<seg_end>` (an allowed-token mask, `Generator.stream(allowed=...)`), so every sample
is exactly one grid of codes, which the recorded VQ-VAE decodes.

The visual tokenizer is any model that encodes images to a grid of codes and decodes them back
(`VisualTokenizer`: a VQ-VAE run opened for inference is one); this module names no other kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from blueberry.data.format import VisualVocab, sha256_file
from blueberry.data.images import ImageShards
from blueberry.errors import UserError
from blueberry.models.lm.generate import AllowedTokens, Generator, Sampling
from blueberry.vision.pixels import to_model_units, to_uint8

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENCODE_BATCH = 512


@runtime_checkable
class VisualTokenizer(Protocol):
    """A model that turns images ([-1, 1], (N, C, H, W)) into grids of codes (N, h, w) and back; its `cfg`
    says its `codebook_size`, `grid`, `channels` and `image_size` (a VQ-VAE is one)."""

    cfg: Any

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


def caption(class_name: str) -> str:
    """The caption of a class: "a seven" for class "7" (digits are spelled), "an airplane", "a cat"."""
    word = NUMBER_WORDS[int(class_name)] if class_name.isdigit() and int(class_name) < 10 else class_name
    article = "an" if word[:1] and word[:1].lower() in "aeiou" and word.lower() != "one" else "a"
    return f"{article} {word}"


def visual_vocab(text_vocab_size: int, vq: VisualTokenizer, classes: Sequence[str], encoder: dict[str, Any]) -> VisualVocab:
    """The layout of a vocabulary of `text_vocab_size` text tokens followed by `<seg_start>`, `<seg_end>` and
    the codes of `vq`; the whole vocabulary is `code_offset + codebook_size`."""
    cfg = vq.cfg
    return VisualVocab(text_vocab_size=text_vocab_size, seg_start=text_vocab_size, seg_end=text_vocab_size + 1,
                       code_offset=text_vocab_size + 2, codebook_size=cfg.codebook_size, grid=(cfg.grid, cfg.grid),
                       image_shape=(cfg.channels, cfg.image_size, cfg.image_size),
                       captions=tuple(caption(c) for c in classes), encoder=dict(encoder))


def vocab_size(layout: VisualVocab) -> int:
    return layout.code_offset + layout.codebook_size


def codes_to_tokens(codes: torch.Tensor, layout: VisualVocab) -> torch.Tensor:
    """(B, h, w) codes to (B, h * w) token ids, row-major."""
    return codes.flatten(1) + layout.code_offset


def tokens_to_codes(tokens: torch.Tensor, layout: VisualVocab) -> torch.Tensor:
    """(B, h * w) token ids to (B, h, w) codes; a token outside the code range is a `ValueError`."""
    codes = tokens - layout.code_offset
    if tokens.shape[1] != layout.codes_per_image or bool(((codes < 0) | (codes >= layout.codebook_size)).any()):
        raise ValueError(f"expected {layout.codes_per_image} code tokens in "
                         f"[{layout.code_offset}, {vocab_size(layout)}), got {tokens.tolist()}")
    return codes.view(-1, *layout.grid)


def document(caption_ids: Sequence[int], codes: torch.Tensor, layout: VisualVocab, bos_id: int) -> np.ndarray:
    """One image's tokens: [BOS] caption <seg_start> codes <seg_end>."""
    tokens = codes_to_tokens(codes.reshape(1, *layout.grid), layout)[0].tolist()
    return np.array([bos_id, *caption_ids, layout.seg_start, *tokens, layout.seg_end], dtype=np.int64)


@torch.no_grad()
def encode_images(vq: VisualTokenizer, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, h, w) codes of uint8 images (N, C, H, W), on the CPU."""
    images = torch.as_tensor(images)
    codes = [vq.encode(to_model_units(images[i:i + ENCODE_BATCH].to(device))).cpu()
             for i in range(0, len(images), ENCODE_BATCH)]
    return torch.cat(codes) if codes else torch.empty((0, vq.cfg.grid, vq.cfg.grid), dtype=torch.int64)


@torch.no_grad()
def decode_codes(vq: VisualTokenizer, codes: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) of (N, h, w) codes."""
    device = next(vq.parameters()).device
    return to_uint8(vq.decode(codes.to(device))).cpu()


def image_documents(vq: VisualTokenizer, data: ImageShards, layout: VisualVocab, caption_ids: Sequence[Sequence[int]],
                    bos_id: int, device: torch.device | str = "cpu") -> Iterator[tuple[str, np.ndarray]]:
    """(split, document) for every image of `data`, split by split, in the data's order."""
    for split in ("train", "val"):
        if split not in data.images:
            continue
        images, labels = data.split_arrays(split)
        codes = encode_images(vq, images, device)
        for label, grid in zip(labels.tolist(), codes):
            yield split, document(caption_ids[label], grid, layout, bos_id)


def recorded_layout(saved_data: dict[str, Any], vocab: int) -> VisualVocab | None:
    """The visual vocabulary a language-model checkpoint records of its data (None: a text model)."""
    raw = (saved_data.get("tokenizer") or {}).get("visual")
    if raw is None:
        return None
    try:
        return VisualVocab.from_dict(raw, vocab)
    except ValueError as err:
        raise UserError(f"the checkpoint's record of its visual vocabulary is damaged ({err}): train the run again "
                        "from data prepared by this version") from None


def check_visual_tokenizer(model: Any, name: str) -> VisualTokenizer:
    """`model` if it encodes images into codes and decodes them (a VQ-VAE), else a one-line error."""
    if not isinstance(model, VisualTokenizer):
        raise UserError(f"{name} is not a visual tokenizer: its model does not encode images into codes and decode "
                        "them (train one with a vqvae-* preset)")
    return model


def recorded_visual_tokenizer(layout: VisualVocab, open_checkpoint: Callable[[Path], Any],
                              path: str | Path | None = None) -> VisualTokenizer:
    """The visual tokenizer `layout` records (or the checkpoint at `path`, which must be the same file: its sha256
    is checked), opened by `open_checkpoint(path)` (a trained run), in eval mode, checked against the layout's
    codebook, grid and image shape."""
    recorded = layout.encoder
    path = Path(path or recorded.get("checkpoint", ""))
    if not path.is_file():
        raise UserError(f"the visual tokenizer (VQ-VAE run {recorded.get('run', '?')}) that the data was prepared "
                        f"with is not at {path}: restore that checkpoint, or pass its new path with "
                        "--visual-tokenizer")
    if recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
        raise UserError(f"{path} is not the VQ-VAE checkpoint the data was encoded with (its sha256 differs): the "
                        "codes would decode to other images; pass the recorded one")
    vq = check_visual_tokenizer(open_checkpoint(path).model, str(path))
    cfg = vq.cfg
    if (cfg.codebook_size, (cfg.grid, cfg.grid), (cfg.channels, cfg.image_size, cfg.image_size)) != \
            (layout.codebook_size, tuple(layout.grid), tuple(layout.image_shape)):
        raise UserError(f"the VQ-VAE at {path} ({cfg.codebook_size} codes, {cfg.grid}x{cfg.grid} grid) does not "
                        f"match the data's layout ({layout.codebook_size} codes, {layout.grid[0]}x{layout.grid[1]})")
    return vq


def code_mask(layout: VisualVocab, vocab: int, device: torch.device | str = "cpu") -> AllowedTokens:
    """The allowed-token rule of an image segment: codes for `codes_per_image` steps, then `<seg_end>`."""
    codes = torch.zeros(vocab, dtype=torch.bool, device=device)
    codes[layout.code_offset:layout.code_offset + layout.codebook_size] = True
    end = torch.zeros(vocab, dtype=torch.bool, device=device)
    end[layout.seg_end] = True
    return lambda step: codes if step < layout.codes_per_image else end


def image_prompt(caption_ids: Sequence[int], layout: VisualVocab, bos_id: int) -> list[int]:
    """What generation continues: [BOS] caption <seg_start>."""
    return [bos_id, *caption_ids, layout.seg_start]


def generate_codes(engine: Generator, layout: VisualVocab, prompts: Sequence[Sequence[int]], bos_id: int,
                   sampling: Sampling = Sampling(), seed: int | None = None) -> torch.Tensor:
    """(len(prompts), h, w) codes sampled after each caption's token ids (one image per prompt)."""
    vocab = engine.model.cfg.vocab_size
    n = layout.codes_per_image
    rows = [image_prompt(p, layout, bos_id) for p in prompts]
    tokens = torch.zeros((len(rows), n + 1), dtype=torch.int64)
    for step, out in enumerate(engine.stream(rows, n + 1, sampling, seed, allowed=code_mask(layout, vocab,
                                                                                             engine.device))):
        tokens[:, step] = out.tokens.cpu()
    return tokens_to_codes(tokens[:, :n], layout)


def render(ids: Sequence[int], layout: VisualVocab, decode: Callable[[list[int]], str]) -> str:
    """A token row as text, with the image segments shown: `a seven<seg_start>[16 codes]<seg_end>`."""
    parts: list[str] = []
    text: list[int] = []
    codes = 0
    for token in [*ids, None]:
        is_code = token is not None and layout.code_offset <= token < layout.code_offset + layout.codebook_size
        if codes and not is_code:
            parts.append(f"[{codes} codes]")
            codes = 0
        if token is not None and token < layout.text_vocab_size:
            text.append(token)
            continue
        if text:
            parts.append(decode(text))
            text = []
        if is_code:
            codes += 1
        elif token is not None:
            parts.append({layout.seg_start: "<seg_start>", layout.seg_end: "<seg_end>"}.get(token, f"<{token}>"))
    return "".join(parts)


def copied_fraction(codes: torch.Tensor, training: torch.Tensor) -> float:
    """The share of code grids (N, h, w) that equal one of the `training` grids exactly: samples a model has
    memorised rather than composed (FID against the training images cannot tell them apart)."""
    seen = {tuple(grid) for grid in training.flatten(1).tolist()}
    return sum(tuple(grid) in seen for grid in codes.flatten(1).tolist()) / max(1, len(codes))
