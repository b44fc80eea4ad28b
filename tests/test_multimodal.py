"""Images as tokens for the language model: the vocabulary layout round-trips (image -> codes -> tokens in
shards -> codes -> image, exact for codes, through `blueberry-data prepare --source vq:RUN`); the manifest
and the checkpoint record the layout and the VQ-VAE, and training refuses a model whose vocabulary is
too small; preparing again is idempotent; the allowed-token mask restricts sampling exactly (against a
naive computation); generation emits exactly one grid of codes, all in the code range, then
`<seg_end>`; `blueberry-generate` writes a grid (and judges it), and a VQ-VAE's reconstructions;
`blueberry-data info` shows where the images are; user mistakes are one line, exit 2.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from blueberry.cli.data import main as data_main
from blueberry.cli.generate import main as generate_main
from blueberry.core.checkpoint import Checkpointer, load_weights
from blueberry.core.config import TrainConfig
from blueberry.core.loop import train
from blueberry.data.format import MANIFEST_NAME, sha256_file
from blueberry.data.images import ImageManifest, ImageShardInfo, ImageShards, ImageSplit, write_image_shard
from blueberry.data.tokens import TokenShards
from blueberry.errors import DataError, UserError
from blueberry.models.lm.config import MM_TINY_VOCAB_SIZE, BUILTIN_VOCAB_SIZE, ModelConfig, mm_tiny
from blueberry.models.lm.generate import Generator, Sampling, sample
from blueberry.models.lm.multimodal import (caption, code_mask, decode_codes, encode_images, generate_codes,
                                            image_prompt, recorded_layout, recorded_visual_tokenizer, tokens_to_codes,
                                            visual_vocab, vocab_size)
from blueberry.models.lm.task import LMTask
from blueberry.models.vqvae.config import VQVAEConfig, vqvae_tiny
from blueberry.models.vqvae.model import VQVAE
from blueberry.models.vqvae.task import VQVAETask

VQ = VQVAEConfig(image_size=8, channels=1, width=16, downsample=1, res_blocks=1, codebook_size=16, code_dim=4)
WORDS = ["<|endoftext|>", "[UNK]", "a", "an", "zero", "one", "two", "cat"]
SEQ_LEN = 32


@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one thread runs them fastest (and on a shared machine, far faster than several)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_images(path: Path, n_train: int = 60, n_val: int = 21) -> Path:
    """A prepared image directory: 8x8 grey blobs in three classes (the class sets the blob's corner)."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 20, (n, 1, 8, 8)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = [(0, 0), (0, 4), (4, 0)][label]
            images[i, :, r:r + 4, c:c + 4] += 200
        sha = write_image_shard(path / f"{split}-00000.arrow", images, labels)
        splits[split] = ImageSplit((ImageShardInfo(f"{split}-00000.arrow", n, sha, 2),), (n // 3,) * 3)
    ImageManifest(shape=(1, 8, 8), classes=("0", "1", "2"), splits=splits, source="synthetic",
                  preparation_key="synthetic-blobs").write(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Image data, a text tokenizer, a VQ-VAE run, multimodal token data from them and a language model run
    trained a few steps on it: what preparing, training and generating make, made small."""
    root = tmp_path_factory.mktemp("multimodal")
    images = write_images(root / "images")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(root / "tokenizer.json"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(train_tokens=16 * 20, batch_size=16, optimizer="adamw", adamw_lr=3e-3, eval_every=0,
                          eval_tokens=16, device="cpu")
        train(VQVAETask(VQ), cfg, ImageShards.open(images), Checkpointer(root / "runs" / "vq" / "checkpoints"))
        data = root / "mm"
        assert data_main(["prepare", "--source", f"vq:{root / 'runs' / 'vq'}", "--images", str(images), "--tokenizer",
                          str(root / "tokenizer.json"), "--out", str(data), "--seq-len", str(SEQ_LEN)]) == 0
        shards = TokenShards.open(data)
        lm = ModelConfig(vocab_size=shards.manifest.tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=2,
                         n_kv_heads=1, d_ff=64, seq_len=SEQ_LEN)
        train(LMTask(lm), TrainConfig(train_tokens=4 * 8 * SEQ_LEN, batch_size=8, eval_every=0, eval_tokens=64,
                                      device="cpu"), shards, Checkpointer(root / "runs" / "mm" / "checkpoints"))
    finally:
        torch.set_num_threads(threads)
    return root


def vq_model(world: Path) -> VQVAE:
    saved = load_weights(world / "runs" / "vq" / "checkpoints")
    model = VQVAE(VQ)
    model.load_state_dict(saved.weights)
    return model.eval()


def documents(stream: list[int], layout, eos: int) -> list[tuple[list[int], list[int]]]:
    """(caption ids, code tokens) of every whole document of a token stream."""
    docs = []
    starts = [j for j, t in enumerate(stream) if t == eos]
    for begin, end in zip(starts, starts[1:]):
        doc = stream[begin + 1:end]
        cut = doc.index(layout.seg_start)
        assert doc[-1] == layout.seg_end
        docs.append((doc[:cut], doc[cut + 1:-1]))
    return docs


def test_captions_spell_digits_and_take_their_article():
    assert [caption(c) for c in ("7", "8", "1", "airplane", "cat")] == ["a seven", "an eight", "a one",
                                                                        "an airplane", "a cat"]


def test_the_mm_tiny_preset_holds_text_markers_and_vqvae_tiny_codes():
    layout = visual_vocab(BUILTIN_VOCAB_SIZE, VQVAE(vqvae_tiny()), [str(i) for i in range(10)], {})
    assert mm_tiny().vocab_size == MM_TINY_VOCAB_SIZE == vocab_size(layout)
    assert layout.codes_per_image + 6 < mm_tiny().seq_len  # a whole captioned image fits a row


def test_image_to_codes_to_tokens_to_codes_to_image_is_exact_for_codes(world):
    shards = TokenShards.open(world / "mm")
    layout = shards.manifest.tokenizer.visual
    vq = vq_model(world)
    images = ImageShards.open(world / "images")
    for split in ("train", "val"):
        pixels, labels = images.split_arrays(split)
        codes = encode_images(vq, pixels)
        rows = np.concatenate([v for v in shards.rows[split].arrays])
        stream = [*rows[0].tolist(), *(t for row in rows[1:] for t in row[1:].tolist())]  # rows overlap by one
        docs = documents(stream, layout, shards.manifest.tokenizer.eos_id)
        assert len(docs) >= len(pixels) - 2  # every document but those cut off at the end of the stream
        read = tokens_to_codes(torch.tensor([tokens for _, tokens in docs]), layout)
        assert torch.equal(read, codes[:len(docs)])
        assert torch.equal(decode_codes(vq, read), decode_codes(vq, codes[:len(docs)]))
        expected = [[WORDS.index(w) for w in layout.captions[label].split()] for label in labels[:len(docs)]]
        assert [ids for ids, _ in docs] == expected
    with pytest.raises(ValueError, match="code tokens"):
        tokens_to_codes(torch.tensor([[layout.seg_end] * layout.codes_per_image]), layout)


def test_the_manifest_and_checkpoint_record_the_layout_and_training_checks_the_vocabulary(world):
    manifest = TokenShards.open(world / "mm").manifest
    layout = manifest.tokenizer.visual
    assert (layout.text_vocab_size, layout.seg_start, layout.seg_end, layout.code_offset) == (8, 8, 9, 10)
    assert manifest.tokenizer.vocab_size == 10 + VQ.codebook_size
    assert layout.grid == (4, 4) and layout.image_shape == (1, 8, 8)
    assert layout.captions == ("a zero", "a one", "a two")
    vq_checkpoint = Path(layout.encoder["checkpoint"])
    assert layout.encoder["sha256"] == sha256_file(vq_checkpoint)
    assert layout.encoder["images_key"] == "synthetic-blobs"
    saved = load_weights(world / "runs" / "mm" / "checkpoints")
    assert recorded_layout(saved.data, manifest.tokenizer.vocab_size) == layout
    small = ModelConfig(vocab_size=manifest.tokenizer.vocab_size - 1, d_model=32, n_layers=1, n_heads=2,
                        n_kv_heads=1, d_ff=64, seq_len=SEQ_LEN)
    with pytest.raises(DataError, match="vocab"):
        LMTask(small).check_data(TokenShards.open(world / "mm"))


def test_a_damaged_layout_is_refused_in_one_line(world, tmp_path):
    copy = tmp_path / "mm"
    copy.mkdir()
    for f in (world / "mm").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    text = (copy / MANIFEST_NAME).read_text()
    (copy / MANIFEST_NAME).write_text(text.replace('"code_offset": 10', '"code_offset": 11'))
    with pytest.raises(DataError, match=r"corrupt manifest .*visual codes 11\.\.26 do not fit the vocab_size 26"):
        TokenShards.open(copy)


def test_preparing_again_is_idempotent_and_another_preparation_is_refused(world, capsys):
    manifest = world / "mm" / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    args = ["prepare", "--source", f"vq:{world / 'runs' / 'vq'}", "--images", str(world / "images"), "--tokenizer",
            str(world / "tokenizer.json"), "--out", str(world / "mm")]
    assert data_main(args + ["--seq-len", str(SEQ_LEN)]) == 0
    assert manifest.stat().st_mtime_ns == before
    capsys.readouterr()
    assert data_main(args + ["--seq-len", "16"]) == 2
    err = capsys.readouterr().err
    assert "already holds a different preparation" in err and err.count("\n") == 1


def test_info_shows_where_the_images_are(world, capsys):
    assert data_main(["info", str(world / "mm")]) == 0
    out = capsys.readouterr().out
    assert "images      4x4 codes of 16 (tokens 10..25, markers 8 9)" in out
    assert "captions    a zero, a one, a two" in out
    assert "<seg_start>[16 codes]<seg_end>" in out


def test_the_allowed_mask_restricts_sampling_exactly():
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    logits[0, 3] = 10.0  # the favourite, not allowed
    allowed = torch.zeros(12, dtype=torch.bool)
    allowed[[1, 5, 6, 9]] = True
    assert sample(logits, Sampling(temperature=0), allowed=allowed).item() == int(
        logits[0].masked_fill(~allowed, -1e9).argmax())
    generator = torch.Generator().manual_seed(1)
    draws = Counter(sample(logits.repeat(4000, 1), Sampling(temperature=1.0), generator, allowed).tolist())
    assert set(draws) <= {1, 5, 6, 9}
    expected = torch.softmax(logits[0, [1, 5, 6, 9]], dim=0)
    for token, p in zip([1, 5, 6, 9], expected.tolist()):
        assert draws[token] / 4000 == pytest.approx(p, abs=0.03)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_emits_exactly_one_grid_of_codes_in_the_code_range(world, temperature):
    saved = load_weights(world / "runs" / "mm" / "checkpoints")
    task = LMTask(ModelConfig(**saved.model_config))
    model = task.build_model()
    model.load_state_dict(saved.weights)
    model.eval()
    layout = recorded_layout(saved.data, model.cfg.vocab_size)
    engine = Generator(model, eos_id=0)
    prompts = [[2, 4], [2, 5], [2, 6], [2, 7], [3, 4]]  # "a zero" ... and a caption never seen
    n = layout.codes_per_image
    rows = [image_prompt(p, layout, 0) for p in prompts]
    steps = list(engine.stream(rows, n + 1, Sampling(temperature=temperature), seed=3,
                               allowed=code_mask(layout, model.cfg.vocab_size)))
    tokens = torch.stack([s.tokens for s in steps], dim=1)
    assert tokens.shape == (len(prompts), n + 1)
    assert ((tokens[:, :n] >= layout.code_offset) & (tokens[:, :n] < layout.code_offset + layout.codebook_size)).all()
    assert (tokens[:, n] == layout.seg_end).all()
    codes = generate_codes(engine, layout, prompts, 0, Sampling(temperature=temperature), seed=3)
    assert torch.equal(codes, tokens[:, :n].view(-1, 4, 4) - layout.code_offset)
    # Unmasked, the barely trained model would not keep to codes: the mask is what guarantees them.
    free = torch.stack([s.tokens for s in engine.stream(rows, n + 1, Sampling(temperature=1.0), seed=3)], dim=1)
    assert ((free < layout.code_offset)).any()


def test_blueberry_generate_writes_a_grid_and_judges_it(world, tmp_path, capsys):
    from PIL import Image

    mm = str(world / "runs" / "mm" / "checkpoints")
    out = tmp_path / "grid.png"
    assert generate_main(["--checkpoint", mm, "--prompt", "a two", "--prompt", "a one", "--num-samples", "3",
                          "--out", str(out), "--temperature", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert height > 2 * 64 and width > 3 * 64  # two rows of three 8x8 images enlarged to 64x64
    assert generate_main(["--checkpoint", mm, "--num-samples", "2", "--out", str(out), "--score",
                          "--data", str(world / "images")]) == 0  # every caption; judged
    printed = capsys.readouterr().out
    assert "recognised as their class; FID" in printed and "6 samples" in printed
    # A VQ-VAE run draws held-out images beside their reconstructions, and judges the reconstructions.
    assert generate_main(["--checkpoint", str(world / "runs" / "vq" / "checkpoints"), "--data", str(world / "images"),
                          "--num-samples", "2", "--out", str(out), "--score"]) == 0
    printed = capsys.readouterr().out
    assert "reconstructed 21 held-out images: PSNR" in printed and "the held-out images themselves" in printed
    assert Image.open(out).size[0] > 4 * 64  # two images and two reconstructions a row


def test_user_mistakes_are_one_line_and_exit_2(world, tmp_path, capsys):
    mm = str(world / "runs" / "mm" / "checkpoints")
    out = str(tmp_path / "grid.png")
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the checkpoint")
    images, tok = str(world / "images"), str(world / "tokenizer.json")
    cases = [
        (data_main, ["prepare", "--source", "vq:nonexistent-run", "--runs-dir", str(world / "runs"), "--images",
                     images, "--out", str(tmp_path / "a")], "no run 'nonexistent-run'"),
        (data_main, ["prepare", "--source", f"vq:{world / 'runs' / 'mm'}", "--images", images, "--tokenizer", tok,
                     "--out", str(tmp_path / "b")], "(a 'lm' run) is not a visual tokenizer"),
        (data_main, ["prepare", "--source", f"vq:{world / 'runs' / 'vq'}", "--out", str(tmp_path / "c")],
         "pass --images DATA"),
        (data_main, ["prepare", "--source", f"vq:{world / 'runs' / 'vq'}", "--images", images, "--tokens", "100",
                     "--out", str(tmp_path / "d")], "--tokens do not apply"),
        (generate_main, ["--checkpoint", mm, "--prompt", "a two"], "pass --out FILE.png"),
        (generate_main, ["--checkpoint", mm, "--out", out, "--visual-tokenizer", str(other)], "sha256 differs"),
        (generate_main, ["--checkpoint", mm, "--out", out, "--visual-tokenizer", str(tmp_path / "gone.pt")],
         "is not at"),
        (generate_main, ["--checkpoint", mm, "--out", out, "--prompt", "a cat", "--score"], "prompt with its captions"),
    ]
    for main, argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_the_visual_tokenizer_must_match_the_layout(world):
    layout = TokenShards.open(world / "mm").manifest.tokenizer.visual
    from blueberry.inference.run import open_run

    def opened(path):
        return open_run(checkpoint=path)

    assert recorded_visual_tokenizer(layout, opened).cfg == VQ
    with pytest.raises(UserError, match="does not match the data's layout"):
        recorded_visual_tokenizer(replace(layout, codebook_size=32), opened)
