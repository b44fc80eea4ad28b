"""The VQ-VAE: quantisation picks the nearest code (against brute-force float64 distances), the
straight-through estimator passes the decoder's gradient to the encoder unchanged, the EMA codebook
moves to the mean of its assigned vectors (against a direct computation), dead codes restart on the
batch's encoder vectors (and a resumed run restarts them as an uninterrupted one does, bit for bit),
parameter and FLOP counts match the model (and PyTorch's FLOP counter), the evaluation's metrics match
a direct computation, data of the wrong shape is refused in one line, and a short training run learns
to reconstruct with most of its codebook.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from interrupts import Interrupt, InterruptAt

from blueberry.core.checkpoint import Checkpointer
from blueberry.core.config import TrainConfig, replace
from blueberry.core.hooks import Hook
from blueberry.core.loop import train
from blueberry.core.parallel import SINGLE_PROCESS
from blueberry.data.images import ImageManifest, ImageShardInfo, ImageShards, ImageSplit, write_image_shard
from blueberry.data.format import sha256_file
from blueberry.errors import DataError
from blueberry.models.registry import preset, task_class_for, train_preset
from blueberry.models.vqvae.config import VQVAEConfig
from blueberry.models.vqvae.model import VQVAE, VectorQuantizer, count_params, flops_per_image, to_model_units
from blueberry.models.vqvae.task import VQVAETask

@pytest.fixture(autouse=True)
def one_thread():
    """These models are small enough that per-operation overhead, not arithmetic, sets their speed: one thread
    runs them fastest, and on a shared machine several threads spinning against other jobs run them far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = VQVAEConfig(image_size=8, channels=1, width=16, downsample=1, res_blocks=1, codebook_size=16, code_dim=4)


def image_dir(path, n_train: int = 96, n_val: int = 32, size: int = 8, channels: int = 1, seed: int = 0):
    """A prepared image directory of blurry random blobs in 3 classes (the class sets the blob's corner)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 20, (n, channels, size, size)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = [(0, 0), (0, size // 2), (size // 2, 0)][label]
            images[i, :, r:r + size // 2, c:c + size // 2] += 180
        sha = write_image_shard(path / f"{split}-00000.arrow", images, labels)
        splits[split] = ImageSplit((ImageShardInfo(f"{split}-00000.arrow", n, sha, int(labels.max())),),
                                   tuple(int(c) for c in np.bincount(labels, minlength=3)))
    ImageManifest(shape=(channels, size, size), classes=("0", "1", "2"), splits=splits, source="synthetic",
                  preparation_key=sha256_file(path / "train-00000.arrow")).write(path)
    return path


def test_quantisation_picks_the_nearest_code():
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=37, code_dim=5).eval()
    z = torch.randn(3, 5, 4, 6) * 1.5
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5).double()
    brute = torch.stack([((v - q.codebook.double()) ** 2).sum(1) for v in flat])  # (N, K), one vector at a time
    expected = brute.argmin(1).view(3, 4, 6)
    assert torch.equal(out.codes, expected)
    assert len(expected.unique()) > 10  # many different codes were picked, not one
    # The quantised vectors are those codes' entries, and the commitment loss their mean squared distance.
    assert torch.allclose(out.quantized, q.codebook[expected].permute(0, 3, 1, 2), atol=1e-6)
    assert out.commitment.item() == pytest.approx(brute.min(1).values.sum().item() / flat.numel(), rel=1e-5)


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    torch.manual_seed(1)
    q = VectorQuantizer(codebook_size=8, code_dim=3).eval()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    weights = torch.randn(2, 3, 2, 2)
    (q(z).quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # d(quantized)/dz is the identity
    assert q.codebook.grad is None  # the codebook is not trained by gradients

    z.grad = None
    out = q(z)
    out.commitment.backward()  # |z - sg(e)|^2 / N: gradient 2 (z - e) / N, nothing to the codebook
    expected = 2 * (z.detach() - q.codebook[out.codes].permute(0, 3, 1, 2)) / z.numel()
    assert torch.allclose(z.grad, expected, atol=1e-7)


def test_ema_codebook_follows_the_mean_of_its_vectors():
    torch.manual_seed(2)
    K, D, decay = 4, 2, 0.9
    q = VectorQuantizer(K, D, decay=decay, threshold=0.0).train()
    q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    q.counts.fill_(5.0)
    q.sums.copy_(q.codebook * 5.0)
    z = torch.tensor([[1.0, 1.0], [2.0, -1.0], [9.0, 1.0], [11.0, 9.0]]).view(1, 4, D).permute(0, 2, 1)[..., None]
    q(z)  # (1, D, 4, 1): four vectors, assigned to codes 0, 0, 1, 3
    counts = np.array([5 * decay + (1 - decay) * 2, 5 * decay + (1 - decay) * 1, 5 * decay, 5 * decay + (1 - decay)])
    sums = np.array([[0, 0], [50, 0], [0, 50], [50, 50]]) * decay + (1 - decay) * np.array(
        [[3, 0], [9, 1], [0, 0], [11, 9]])
    np.testing.assert_allclose(q.counts.numpy(), counts, rtol=1e-6)
    np.testing.assert_allclose(q.codebook.numpy(), sums / counts[:, None], rtol=1e-6)


def test_dead_codes_restart_on_encoder_vectors_of_the_batch():
    torch.manual_seed(3)
    q = VectorQuantizer(codebook_size=6, code_dim=3, decay=0.99, threshold=1.0).train()
    q.codebook.copy_(torch.randn(6, 3))
    q.codebook[5] = 1000.0  # far from every vector: never chosen
    q.counts.fill_(50.0)
    q.counts[5] = 1.0  # about to fall below the threshold
    q.sums.copy_(q.codebook * q.counts[:, None])
    z = torch.randn(4, 3, 5, 5)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    out = q(z)
    assert not (out.codes == 5).any()
    # Code 5 now sits exactly on one of the batch's vectors, with its count reset to the threshold...
    assert (vectors == q.codebook[5]).all(1).any()
    assert q.counts[5].item() == 1.0
    # ...and live codes did not restart (they moved to the moving mean of their vectors).
    assert (q.counts[:5] > 1.0).all()
    assert not any((vectors == q.codebook[k]).all(1).any() for k in range(5))
    # A fresh quantiser starts with zero counts: its first training step draws every code from the data.
    fresh = VectorQuantizer(codebook_size=6, code_dim=3).train()
    fresh(z)
    assert all((vectors == fresh.codebook[k]).all(1).any() for k in range(6))
    assert len(fresh.codebook.unique(dim=0)) == 6  # each on a different vector
    # The draw comes from the global generator, so the same seed restarts the same way.
    again, other = VectorQuantizer(codebook_size=6, code_dim=3).train(), VectorQuantizer(codebook_size=6, code_dim=3)
    torch.manual_seed(4)
    again(z)
    torch.manual_seed(4)
    other.train()(z)
    assert torch.equal(again.codebook, other.codebook)


def test_in_eval_mode_the_codebook_stays_as_it_is():
    q = VectorQuantizer(codebook_size=6, code_dim=3).eval()
    before = {name: b.clone() for name, b in q.named_buffers()}
    q(torch.randn(2, 3, 4, 4))
    assert all(torch.equal(before[name], b) for name, b in q.named_buffers())


@pytest.mark.parametrize("name", ["vqvae-tiny", "vqvae-cifar"])
def test_parameter_and_flop_counts_match_the_model(name):
    cfg = preset(name)
    model = VQVAE(cfg).eval()
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    x = torch.randn(1, cfg.channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
    assert flops_per_image(cfg) == 3 * counter.get_total_flops()
    assert out.reconstruction.shape == x.shape
    assert out.codes.shape == (1, cfg.grid, cfg.grid)


def test_presets_are_registered_with_their_training():
    assert isinstance(preset("vqvae-tiny"), VQVAEConfig)
    assert task_class_for(preset("vqvae-cifar")) is VQVAETask
    assert train_preset("vqvae-tiny").optimizer == "adamw"  # convolutions: nothing for Muon


def test_evaluation_matches_a_direct_computation(tmp_path):
    data = ImageShards.open(image_dir(tmp_path / "images"))
    task = VQVAETask(SMALL)
    torch.manual_seed(5)
    model = task.build_model()
    model.train()
    images, _ = data.split_arrays("train")
    model(to_model_units(torch.from_numpy(images)))  # one training forward: codes drawn from the data
    cfg = TrainConfig(batch_size=7, eval_tokens=20, device="cpu")
    metrics = task.evaluate(model, data, cfg, torch.device("cpu"), SINGLE_PROCESS)
    assert model.training  # evaluate puts the mode back

    model.eval()
    val, _ = data.split_arrays("val")
    x = to_model_units(torch.from_numpy(val[:20])).double()
    with torch.no_grad():
        out = model(x.float())
    recon = out.reconstruction.double()
    mse01 = (((recon.clamp(-1, 1) + 1) / 2 - (x + 1) / 2) ** 2).mean().item()
    counts = np.bincount(out.codes.flatten().numpy(), minlength=SMALL.codebook_size)
    p = counts[counts > 0] / counts.sum()
    assert metrics["loss"] == pytest.approx(((recon - x) ** 2).mean().item(), rel=1e-5)
    assert metrics["mse"] == pytest.approx(mse01, rel=1e-5)
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / mse01), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert metrics["codes_used"] == pytest.approx((counts > 0).mean())
    assert set(metrics) == set(VQVAETask.eval_metrics)


def test_data_of_another_shape_is_refused_in_one_line(tmp_path):
    data = ImageShards.open(image_dir(tmp_path / "images", size=8))
    with pytest.raises(DataError, match=r"holds 1x8x8 images, the model takes 3x32x32") as err:
        VQVAETask(preset("vqvae-cifar")).check_data(data)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="trains on images"):
        VQVAETask(SMALL).check_data(object())


class KeepWeights(Hook):
    def on_end(self, result, state):
        self.weights = {k: v.clone() for k, v in state.model.state_dict().items()}


def test_a_resumed_run_restarts_the_codes_an_uninterrupted_one_would(tmp_path):
    # A threshold above the mean count per code: codes die and restart at every step, from the RNG.
    cfg_model = replace(SMALL, dead_code_threshold=20.0)
    data = ImageShards.open(image_dir(tmp_path / "images"))
    cfg = TrainConfig(train_tokens=16 * 10, batch_size=16, optimizer="adamw", adamw_lr=3e-3, eval_every=0,
                      eval_tokens=16, device="cpu", checkpoint_every=5)
    reference = KeepWeights()
    train(VQVAETask(cfg_model), cfg, data, [reference])
    with pytest.raises(Interrupt):
        train(VQVAETask(cfg_model), cfg, data, [Checkpointer(tmp_path / "ckpt", every=5), InterruptAt(7)])
    resumed = KeepWeights()
    checkpointer = Checkpointer(tmp_path / "ckpt", every=5)
    train(VQVAETask(cfg_model), cfg, data, [checkpointer, resumed])
    assert checkpointer.resumed_from.name == "step-00000005.pt"
    assert set(reference.weights) >= {"quantizer.codebook", "quantizer.counts", "quantizer.sums"}
    for name, value in reference.weights.items():
        assert torch.equal(value, resumed.weights[name]), name


@pytest.mark.slow
def test_a_short_run_learns_to_reconstruct_with_most_codes(tmp_path):
    data = ImageShards.open(image_dir(tmp_path / "images", n_train=192))
    task = VQVAETask(SMALL)
    cfg = TrainConfig(train_tokens=32 * 150, batch_size=32, optimizer="adamw", adamw_lr=3e-3, weight_decay=0.0,
                      warmup_frac=0.05, eval_every=0, eval_tokens=32, device="cpu", seed=0)
    torch.manual_seed(0)
    before = task.evaluate(task.build_model(), data, cfg, torch.device("cpu"), SINGLE_PROCESS)
    result = train(task, cfg, data)
    after = result.val.metrics
    assert after["psnr"] > before["psnr"] + 6  # 4x smaller error at least
    assert after["codes_used"] >= 0.5
    assert result.train_loss < 0.1
