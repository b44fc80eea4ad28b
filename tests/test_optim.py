"""Muon's orthogonaliser against an SVD reference in float64 (and its FLOP count against torch's), the
parameter split, and the schedules."""

import math

import pytest
import torch

from blueberry.core.config import TrainConfig, replace
from blueberry.core.optim import Muon, build_optimizer, lr_multiplier, polar_express, polar_express_flops, split_params
from blueberry.errors import ConfigError
from blueberry.models.lm.config import preset
from blueberry.models.lm.model import Blueberry
from blueberry.models.lm.task import LMTask

# Five Polar Express steps map every singular value in the design range into about [0.859, 1.141]
# (the polynomials equioscillate around 1); they never move the singular vectors.
BAND = (0.855, 1.145)


def matrix_with_spectrum(m: int, n: int, condition: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(condition), k, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T, U, V


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)])
@pytest.mark.parametrize("condition", [1.0, 10.0, 100.0])
def test_polar_express_against_svd_in_float64(shape, condition):
    G, U, V = matrix_with_spectrum(*shape, condition)
    O = polar_express(G, dtype=torch.float64)
    D = U.T @ O @ V  # the result in G's singular basis: diagonal iff singular vectors are kept
    assert (D - torch.diag(torch.diag(D))).abs().max() < 1e-12
    assert BAND[0] <= torch.diag(D).min() and torch.diag(D).max() <= BAND[1]
    # Same singular values as SVD's own reconstruction of the polar factor, up to the band.
    polar = U @ V.T
    assert torch.linalg.matrix_norm(O - polar, ord=2) <= max(1 - BAND[0], BAND[1] - 1)


def test_polar_express_in_bf16_stays_in_the_band():
    G, U, V = matrix_with_spectrum(128, 512, 100.0)
    D = U.T @ polar_express(G, dtype=torch.bfloat16).double() @ V
    assert BAND[0] - 0.01 <= torch.diag(D).min() and torch.diag(D).max() <= BAND[1] + 0.01
    assert (D - torch.diag(torch.diag(D))).abs().max() < 0.06  # bf16 rounding, not a change of direction


def test_muon_step_is_scaled_orthogonalised_nesterov_momentum():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 16, dtype=torch.float64))
    opt = Muon([p], lr=0.1, momentum=0.9, ortho_dtype=torch.float64)
    grads = [torch.randn(64, 16, dtype=torch.float64) for _ in range(2)]
    buf = torch.zeros_like(p)
    expected = p.detach().clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + 0.1 * g
        nesterov = 0.1 * g + 0.9 * buf
        expected -= 0.1 * math.sqrt(64 / 16) * polar_express(nesterov, dtype=torch.float64)
    assert torch.allclose(p.detach(), expected, atol=1e-12)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.ones(3))], lr=0.1)


def test_parameter_split_covers_everything_once():
    cfg = preset("tiny")
    model = Blueberry(cfg)
    hidden, decayed, no_decay = split_params(model, LMTask(cfg).hidden_matrices(model))
    ids = [id(p) for group in (hidden, decayed, no_decay) for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert len(hidden) == cfg.n_layers * 6  # q, k, v, o, up, down
    assert all(p.ndim == 2 for p in hidden)
    assert decayed == [model.embed.weight]  # the tied embedding goes to AdamW
    assert len(no_decay) == cfg.n_layers * 4 + 1 and all(p.ndim == 1 for p in no_decay)


def test_muon_leaves_the_moe_router_to_adamw_and_a_kind_without_blocks_gets_no_muon():
    cfg = replace(preset("tiny"), n_experts=4, experts_top_k=2)
    model = Blueberry(cfg)
    hidden = LMTask(cfg).hidden_matrices(model)
    routers = [block.mlp.router.weight for block in model.blocks]
    assert len(hidden) == cfg.n_layers * (4 + 2 * cfg.n_experts)  # q, k, v, o and each expert's up, down
    assert not any(r is p for r in routers for p in hidden)
    with pytest.raises(ConfigError, match="declares no blocks"):
        build_optimizer(model, TrainConfig(), torch.device("cpu"), hidden_matrices=[])
    (adamw,) = build_optimizer(model, TrainConfig(optimizer="adamw"), torch.device("cpu")).optimizers
    assert sum(len(g["params"]) for g in adamw.param_groups) == len(list(model.parameters()))


def test_build_optimizer_groups():
    model = Blueberry(preset("tiny"))
    muon_set = build_optimizer(model, TrainConfig(), torch.device("cpu"), LMTask(preset("tiny")).hidden_matrices(model))
    assert [type(o).__name__ for o in muon_set.optimizers] == ["Muon", "AdamW"]
    adamw_set = build_optimizer(model, TrainConfig(optimizer="adamw"), torch.device("cpu"))
    (adamw,) = adamw_set.optimizers
    decay = {g["weight_decay"] for g in adamw.param_groups}
    assert decay == {0.2, 0.0} and adamw.param_groups[0]["lr"] == TrainConfig().adamw_lr
    muon_set.set_lr_multiplier(0.5)
    assert [g["lr"] for g in muon_set.param_groups] == [0.012, 0.003, 0.003]


def test_schedules():
    total = 100
    cosine = TrainConfig(schedule="cosine", warmup_frac=0.1, min_lr_frac=0.1)
    assert lr_multiplier(0, total, cosine) == pytest.approx(0.1)  # warmup: (step + 1) / 10
    assert lr_multiplier(9, total, cosine) == pytest.approx(1.0)
    assert lr_multiplier(10, total, cosine) == pytest.approx(1.0)
    assert lr_multiplier(55, total, cosine) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lr_multiplier(100, total, cosine) == pytest.approx(0.1)

    wsd = TrainConfig(schedule="wsd", warmup_frac=0.0, decay_frac=0.2, min_lr_frac=0.0)
    assert [lr_multiplier(s, total, wsd) for s in (0, 50, 79)] == [1.0, 1.0, 1.0]
    assert lr_multiplier(89, total, wsd) == pytest.approx(0.5)
    assert lr_multiplier(99, total, wsd) == pytest.approx(0.0)

    constant = TrainConfig(schedule="constant", warmup_frac=0.0)
    assert {lr_multiplier(s, total, constant) for s in range(total)} == {1.0}


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)])
def test_polar_express_flops_match_torchs_count(shape):
    # What the distributed Muon balances across ranks and counts per rank (tests/test_fsdp.py).
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        polar_express(torch.randn(*shape), dtype=torch.float32)
    assert polar_express_flops(shape) == counter.get_total_flops()


def test_muon_counts_the_matrices_it_orthogonalises():
    p, q = torch.nn.Parameter(torch.randn(64, 16)), torch.nn.Parameter(torch.randn(32, 32))
    opt = Muon([p, q], lr=0.1, ortho_dtype=torch.float32)
    for _ in range(3):
        p.grad, q.grad = torch.randn(64, 16), torch.randn(32, 32)
        opt.step()
    assert opt.work.matrices == 6
    assert opt.work.flops == 3 * (polar_express_flops((64, 16)) + polar_express_flops((32, 32)))
