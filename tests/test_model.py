"""The model: shapes, exact parameter counts, and attention/RoPE/MoE against naive float64 references."""

import math

import pytest
import torch

from blueberry.models.lm.config import ModelConfig, preset
from blueberry.models.lm.model import (Attention, Blueberry, MoE, apply_rotary, count_params, flops_per_token,
                                       rotary_tables)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_forward_shapes_and_loss_at_init():
    cfg = preset("tiny")
    model = Blueberry(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 33))
    out = model(ids[:, :-1], ids[:, 1:])
    assert out.logits.shape == (2, 32, cfg.vocab_size)
    # At initialisation the prediction is near uniform: loss close to ln(vocab).
    assert abs(out.loss.item() - math.log(cfg.vocab_size)) < 0.5
    assert out.aux_loss.item() == 0.0


@pytest.mark.parametrize("name", ["tiny", "small", "nano-88m", "nano-151m"])
def test_count_params_matches_the_built_model(name):
    cfg = preset(name)
    with torch.device("meta"):
        model = Blueberry(cfg)
    counts = count_params(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.non_embedding == counts.total - model.embed.weight.numel()


@pytest.mark.parametrize("name, nominal", [("nano-88m", 88e6), ("nano-151m", 151e6)])
def test_named_presets_within_two_percent_of_their_names(name, nominal):
    assert abs(count_params(preset(name)).total / nominal - 1) < 0.02


def test_moe_counts_total_and_active():
    cfg = ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, seq_len=16,
                      n_experts=4, experts_top_k=1)
    with torch.device("meta"):
        model = Blueberry(cfg)
    counts = count_params(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    expert = 2 * 32 * 64
    assert counts.total - counts.active == 2 * 3 * expert  # three idle experts per layer


def test_flops_per_token_is_6n_plus_attention():
    cfg = preset("nano-88m")
    n = count_params(cfg).total
    assert flops_per_token(cfg) == 6 * n + 12 * 22 * 8 * 64 * 2048


def naive_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE as complex rotation: pair (x_i, x_{i+D/2}) is z = x_i + j x_{i+D/2}, multiplied by e^{j t theta_i}."""
    B, H, T, D = x.shape
    half = D // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    z = torch.complex(x[..., :half], x[..., half:])
    z = z * torch.polar(torch.ones(T, half, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * theta)
    return torch.cat((z.real, z.imag), dim=-1)


def test_rotary_matches_complex_rotation():
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    cos, sin = rotary_tables(8, 10, 10000.0, dtype=torch.float64)
    assert torch.allclose(apply_rotary(x, cos, sin), naive_rope(x, 10000.0), atol=1e-12)


def test_gqa_attention_matches_naive_per_head_loop():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, seq_len=12)
    attn = Attention(cfg).double()
    torch.nn.init.normal_(attn.q_norm.weight, 1.0, 0.1)  # non-trivial norm gains
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    cos, sin = rotary_tables(cfg.head_dim, 12, cfg.rope_base, dtype=torch.float64)
    got = attn(x, cos, sin)

    hd, T = cfg.head_dim, 12
    def heads(proj, n):
        return proj(x).view(2, T, n, hd).transpose(1, 2)
    def rms(v, w):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w
    q = naive_rope(rms(heads(attn.q_proj, 4), attn.q_norm.weight), cfg.rope_base)
    k = naive_rope(rms(heads(attn.k_proj, 2), attn.k_norm.weight), cfg.rope_base)
    v = heads(attn.v_proj, 2)
    outs = []
    for h in range(4):
        kv = h // 2  # query heads 0,1 share KV head 0; 2,3 share KV head 1
        scores = q[:, h] @ k[:, kv].transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        outs.append(scores.softmax(-1) @ v[:, kv])
    expected = attn.o_proj(torch.stack(outs, dim=2).reshape(2, T, 4 * hd))
    assert torch.allclose(got, expected, atol=1e-10)


def test_model_is_causal():
    cfg = preset("tiny")
    model = Blueberry(cfg).double()
    ids = torch.randint(0, cfg.vocab_size, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (ids[0, 12] + 1) % cfg.vocab_size
    a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[0, :12], b[0, :12])
    assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_moe_matches_naive_token_loop_and_balanced_aux_loss_is_one():
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, seq_len=8,
                      n_experts=4, experts_top_k=2, moe_aux_loss_weight=1.0)
    moe = MoE(cfg).double()
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    out, aux = moe(x)
    tokens = x.reshape(-1, 16)
    probs = (tokens @ moe.router.weight.T).softmax(-1)
    expected = torch.zeros_like(tokens)
    for t in range(len(tokens)):
        w, idx = probs[t].topk(2)
        for weight, e in zip(w / w.sum(), idx):
            expected[t] += weight * moe.experts[int(e)](tokens[t:t + 1])[0]
    assert torch.allclose(out.reshape(-1, 16), expected, atol=1e-10)
    # With a zero router every expert has probability 1/E, so the Switch loss is exactly 1.
    torch.nn.init.zeros_(moe.router.weight)
    assert moe(x)[1].item() == pytest.approx(1.0)


def test_moe_model_trains_end_to_end():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, seq_len=16,
                      n_experts=4, experts_top_k=2)
    model = Blueberry(cfg)
    ids = torch.randint(0, 64, (4, 17))
    out = model(ids[:, :-1], ids[:, 1:])
    (out.loss + out.aux_loss).backward()
    assert out.aux_loss.item() > 0
    assert all(p.grad is not None for p in model.blocks[0].mlp.router.parameters())
