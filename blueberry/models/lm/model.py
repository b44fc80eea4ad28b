"""The Blueberry transformer.

Architecture choices, all set by `ModelConfig`:
- decoder-only, pre-norm blocks: x + attn(norm(x)), then x + mlp(norm(x)), with RMSNorm;
- grouped-query attention (n_heads query heads share n_kv_heads key/value heads) through
  `F.scaled_dot_product_attention` with a causal mask;
- QK-norm: RMSNorm over each head's queries and keys before RoPE (keeps attention logits bounded,
  which Muon's large updates need);
- rotary position embeddings (RoPE, base 10000, rotate-half convention);
- MLP: squared ReLU (`relu2`, two matrices, Primer / modded-nanogpt) or SwiGLU (three matrices);
- optional Mixture of Experts in place of the MLP: top-k softmax routing with the Switch
  Transformer load-balancing loss (Fedus et al. 2021, eq. 4), off by default; tokens reach their
  experts sorted by expert through grouped matmuls, at shapes independent of the routing, so the
  whole model compiles into one graph;
- decoding on a preallocated KV cache (`KVCache`), or on one of fixed size with its position as a
  tensor (`StaticKVCache`), which a compiled decode step captures as a CUDA graph;
- tied input and output embeddings, no biases anywhere.

Parameter counting and FLOPs accounting live here too, next to the shapes they describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.grouped_mm import grouped_mm

INIT_STD = 0.02


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # mean next-token cross-entropy, when targets are given
    aux_loss: torch.Tensor  # weighted MoE load-balancing loss; zero for dense models


def rotary_tables(head_dim: int, seq_len: int, base: float,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles, each (T, head_dim / 2). Angles are computed in float64: in
    float32, position 2047 times the fastest frequency is already off by about 1e-4 radians."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x (B, H, T, D) by the position's angles: cos and sin (T, D/2),
    or (B, 1, T, D/2) when each sequence has its own positions (decoding left-padded prompts)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def apply_rotary_rolled(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` in five operations instead of nine, for decoding, where a step is a few small
    operations and their count sets the speed: with tables of full width D, `cos` = (cos, cos) and
    `signed_sin` = (-sin, sin), the rotation is x * cos + (x2, x1) * signed_sin. (`torch.roll` would
    swap the halves in one operation, but it is slower on CPU than two views and a `cat`.)"""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos, torch.cat((x[..., half:], x[..., :half]), dim=-1), signed_sin)


class KVCache:
    """Keys and values of every layer for decoding, preallocated for `max_len` positions: prefill
    writes the prompts' keys, each decode step one more. Prompts of different lengths are left-padded:
    row b's first `pad[b]` slots are padding, masked out of attention, and its RoPE positions count
    from its first real token, so each row decodes exactly as it would alone."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, pad: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if max_len > cfg.seq_len:
            raise ValueError(f"a cache of {max_len} positions exceeds the model's seq_len {cfg.seq_len}")
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # Each layer's view, taken once: a decode step then indexes no layer dimension.
        self.layer_keys, self.layer_values = self.keys.unbind(0), self.values.unbind(0)
        self.dtype = dtype
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device) if pad is None else pad.to(device)
        self.length = 0  # slots written, padding included; the same for every row
        self.max_len = max_len

        # Every slot's RoPE position and attention mask, computed once: a decode step slices them.
        slots = torch.arange(max_len, device=self.pad.device)
        # Slot index minus the row's padding (padding slots get position 0; nothing attends to them).
        self.positions = (slots[None, :] - self.pad[:, None]).clamp(min=0)  # (B, max_len)
        # True where a query may attend: causal, and never to padding (a padding slot attends to
        # itself alone, so its row of scores is never empty).
        real = slots[None, None, :] >= self.pad[:, None, None]  # (B, 1, max_len)
        causal = slots[None, :] <= slots[:, None]  # (query, key)
        itself = torch.eye(max_len, dtype=torch.bool, device=self.pad.device)
        self.masks = (causal[None] & (real | itself))[:, None]  # (B, 1, query, key)
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None

    def mask(self, T: int) -> torch.Tensor:
        """(B, 1, T, length + T): what the next T slots may attend to."""
        return self.masks[:, :, self.length:self.length + T, :self.length + T]

    def rotary(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next T slots' RoPE tables for `apply_rotary_rolled`, (B, 1, T, D): (cos, cos) and
        (-sin, sin) at each row's positions, from the model's (positions, D/2) tables, in the cache's dtype."""
        if self._rotary is None:
            cos, sin = cos[self.positions][:, None], sin[self.positions][:, None]
            self._rotary = (torch.cat((cos, cos), dim=-1).to(self.dtype),
                            torch.cat((-sin, sin), dim=-1).to(self.dtype))
        return tuple(table[:, :, self.length:self.length + T] for table in self._rotary)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the next T slots' keys and values (B, KV, T, D) of `layer`; all of the layer's so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; writing up to {end}")
        keys, values = self.layer_keys[layer], self.layer_values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, T: int) -> None:
        """The next T slots are written (every layer's)."""
        self.length += T


class StaticKVCache:
    """`KVCache` at shapes that never change, for a compiled decode step: attention always spans all `max_len`
    slots (those not yet written are masked out), and the slots written so far are a tensor, `position`, not a
    Python int. So one graph serves every step of every call, and `torch.compile(mode="reduce-overhead")`
    replays it as a CUDA graph; its tensors are marked as static addresses, so the graph writes into them in
    place. One cache serves call after call of the same batch size (`reset` starts the next)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if max_len > cfg.seq_len:
            raise ValueError(f"a cache of {max_len} positions exceeds the model's seq_len {cfg.seq_len}")
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        # A tensor per layer, not views of one: the compiled step then writes each in place (an in-place write
        # to a view of a graph input is compiled as a copy of the whole input).
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.position = torch.zeros((), dtype=torch.long, device=device)  # slots written, padding included
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.slots = torch.arange(max_len, device=device)
        self.dtype, self.max_len = dtype, max_len
        for tensor in (*self.keys, *self.values, self.position, self.pad, self.slots):
            torch._dynamo.mark_static_address(tensor)

    def reset(self, pad: torch.Tensor) -> None:
        """Start a new call: nothing written, row b's first `pad[b]` slots padding (left-padded prompts)."""
        self.pad.copy_(pad)
        self.position.zero_()

    def _queries(self, T: int) -> torch.Tensor:
        return self.position + torch.arange(T, device=self.slots.device)  # (T,) the next T slots

    def mask(self, T: int) -> torch.Tensor:
        """(B, 1, T, max_len): what the next T slots may attend to, as `KVCache.mask` says."""
        query = self._queries(T)
        causal = self.slots[None, :] <= query[:, None]  # (T, S)
        itself = self.slots[None, :] == query[:, None]
        real = (self.slots[None, :] >= self.pad[:, None])[:, None]  # (B, 1, S)
        return (causal[None] & (real | itself[None]))[:, None]

    def rotary(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next T slots' tables for `apply_rotary_rolled`, (B, 1, T, D), as `KVCache.rotary` gives them."""
        positions = (self._queries(T)[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)
        cos, sin = cos[positions][:, None], sin[positions][:, None]
        return torch.cat((cos, cos), dim=-1).to(self.dtype), torch.cat((-sin, sin), dim=-1).to(self.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the next T slots' keys and values (B, KV, T, D) of `layer`; all `max_len` slots of the layer."""
        index = self._queries(k.shape[2])
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, index, k)
        values.index_copy_(2, index, v)
        return keys, values

    def advance(self, T: int) -> None:
        self.position += T


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[KVCache, int, torch.Tensor] | None = None) -> torch.Tensor:
        """`cache`: (the cache, this layer's index, the attention mask) when decoding; `cos` and `sin`
        are then the cache's tables for `apply_rotary_rolled`."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        gqa = self.n_kv_heads != self.n_heads
        if cache is None:
            q = apply_rotary(self.q_norm(q), cos, sin)
            k = apply_rotary(self.k_norm(k), cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, H, T, D)
        else:
            kv_cache, layer, mask = cache
            q = apply_rotary_rolled(self.q_norm(q), cos, sin)
            k = apply_rotary_rolled(self.k_norm(k), cos, sin)
            k, v = kv_cache.update(layer, k, v)  # (B, KV, S, D): every slot so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """down(silu(gate(x)) * up(x)) for `swiglu`, down(relu(up(x))^2) for `relu2` (`ModelConfig.mlp`)."""

    def __init__(self, d_model: int, d_ff: int, activation: str) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.gate = nn.Linear(d_model, d_ff, bias=False) if activation == "swiglu" else None
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.relu(self.up(x)).square())


def dispatch_grouped(experts: nn.ModuleList, tokens: torch.Tensor, weights: torch.Tensor,
                     chosen: torch.Tensor) -> torch.Tensor:
    """sum_j weights[n, j] * expert_{chosen[n, j]}(tokens[n]) for every token n (tokens (N, C), weights and
    chosen (N, k)), with shapes that do not depend on the routing, so it compiles into one graph: the N * k
    (token, expert) pairs are sorted by expert, each expert's matrices multiply its contiguous run of rows in
    one grouped matmul, and the results return to their tokens by the inverse permutation. No token is dropped
    (no capacity limit). The experts' weights are stacked at each call, so parameters, checkpoints, Muon and
    the export see one `MLP` per expert as before."""
    N, k = chosen.shape
    E = len(experts)
    flat = chosen.flatten()  # (N*k,) expert of each pair, pairs in token order
    order = flat.argsort(stable=True)  # pairs sorted by expert
    ends = torch.zeros(E, dtype=torch.int32, device=flat.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32)).cumsum(0, dtype=torch.int32)  # (E,)
    # Under autocast the matmuls run in its dtype, as nn.Linear's do (the grouped op has no autocast rule).
    dtype = torch.get_autocast_dtype(tokens.device.type) if torch.is_autocast_enabled(tokens.device.type) \
        else tokens.dtype

    def stacked(name: str) -> torch.Tensor:  # (E, in, out): every expert's nn.Linear weight, transposed
        return torch.stack([getattr(e, name).weight for e in experts]).to(dtype).transpose(1, 2)

    rows = tokens[order // k].to(dtype)  # (N*k, C)
    hidden = grouped_mm(rows, stacked("up"), ends)  # (N*k, F)
    if experts[0].gate is not None:
        hidden = F.silu(grouped_mm(rows, stacked("gate"), ends)) * hidden
    else:
        hidden = F.relu(hidden).square()
    out = grouped_mm(hidden, stacked("down"), ends)  # (N*k, C), sorted
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    out = out[inverse].view(N, k, -1).to(tokens.dtype)  # back in token order, (N, k, C)
    return (out * weights.to(tokens.dtype)[..., None]).sum(dim=1)


def dispatch_looped(experts: nn.ModuleList, tokens: torch.Tensor, weights: torch.Tensor,
                    chosen: torch.Tensor) -> torch.Tensor:
    """What `dispatch_grouped` computes, one expert at a time on the tokens routed to it: the MoE's dispatch
    before issue #27, kept as the reference it is tested and measured against. Its shapes depend on the
    routing (`nonzero`), so `torch.compile` splits the model at each expert."""
    out = torch.zeros_like(tokens)
    weights = weights.to(tokens.dtype)
    for e, expert in enumerate(experts):
        token_idx, slot = (chosen == e).nonzero(as_tuple=True)
        if token_idx.numel():
            out.index_add_(0, token_idx, expert(tokens[token_idx]) * weights[token_idx, slot, None])
    return out


class MoE(nn.Module):
    """Top-k routed experts with the Switch Transformer load-balancing loss.

    `dispatch` (a plain attribute, `dispatch_grouped` by default) sends the tokens to their experts; the
    benchmarks and tests swap in `dispatch_looped` to compare."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k, self.n_experts, self.aux_weight = cfg.experts_top_k, cfg.n_experts, cfg.moe_aux_loss_weight
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg.d_model, cfg.d_ff, cfg.mlp) for _ in range(cfg.n_experts))
        self.dispatch = dispatch_grouped

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C)
        logits = self.router(tokens)  # (N, E); softmax in at least float32, even under bf16 autocast
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = self.dispatch(self.experts, tokens, weights, chosen)
        # Switch loss: E * sum_e (fraction of routed slots to e) * (mean router prob of e); 1 when balanced.
        routed_fraction = F.one_hot(chosen, self.n_experts).float().sum(dim=(0, 1)) / chosen.numel()
        aux = self.n_experts * (routed_fraction * probs.mean(dim=0)).sum()
        return out.view(B, T, C), self.aux_weight * aux


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe else MLP(cfg.d_model, cfg.d_ff, cfg.mlp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[KVCache, int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and its MoE balancing loss (None for a dense block)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        if isinstance(self.mlp, MoE):
            mlp_out, aux = self.mlp(self.mlp_norm(x))
            return x + mlp_out, aux
        return x + self.mlp(self.mlp_norm(x)), None


class Blueberry(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        cos, sin = rotary_tables(cfg.head_dim, cfg.seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
        residual_std = INIT_STD / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.ndim < 2:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("o_proj.weight", "down.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=INIT_STD)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | StaticKVCache | None = None, last_only: bool = False) -> ModelOutput:
        """Logits for `input_ids` (B, T); with `cache`, for the T tokens after those already in it (prefill
        then one token a step), which it then holds too. `last_only`: logits for the last position alone
        (B, 1, V), all that decoding needs of a prefill."""
        T = input_ids.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's seq_len {self.cfg.seq_len}")
        x = self.embed(input_ids)  # (B, T, C)
        aux_loss = x.new_zeros((), dtype=torch.float32)
        if cache is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            for block in self.blocks:
                x, aux = block(x, cos, sin)
                aux_loss = aux_loss if aux is None else aux_loss + aux
        else:
            cos, sin = cache.rotary(self.rope_cos, self.rope_sin, T)  # (B, 1, T, D/2)
            mask = cache.mask(T)
            for layer, block in enumerate(self.blocks):
                x, aux = block(x, cos, sin, (cache, layer, mask))
                aux_loss = aux_loss if aux is None else aux_loss + aux
            cache.advance(T)
        if last_only:
            if targets is not None:
                raise ValueError("last_only computes one position's logits; a loss needs every position's")
            x = x[:, -1:]
        logits = F.linear(self.final_norm(x), self.embed.weight)  # tied output head, (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return ModelOutput(logits, loss, aux_loss)


@dataclass(frozen=True)
class ParamCount:
    total: int
    non_embedding: int  # everything but the (tied) token embedding
    active: int  # parameters one token passes through: for MoE, top_k of n_experts experts


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact parameter counts from the config, without building the model."""
    d, hd = cfg.d_model, cfg.head_dim
    attention = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2 + 2 * hd  # q, o, k, v, qk-norms
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff
    experts_total = cfg.n_experts * mlp + d * cfg.n_experts if cfg.is_moe else mlp
    experts_active = cfg.experts_top_k * mlp + d * cfg.n_experts if cfg.is_moe else mlp
    norms = 2 * d
    embedding = cfg.vocab_size * d
    non_embedding = cfg.n_layers * (attention + experts_total + norms) + d
    active = cfg.n_layers * (attention + experts_active + norms) + d
    return ParamCount(total=embedding + non_embedding, non_embedding=non_embedding, active=active + embedding)


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 x (matmul parameters a token passes through) + attention.

    Matmul parameters are the active non-embedding weights plus the output head (d_model x vocab,
    tied to the embedding but still a matmul); the embedding lookup costs nothing. The attention
    term is 12 x layers x (heads x head_dim) x seq_len (Chowdhery et al. 2022, PaLM, appendix B),
    counting the full T x T score matrix as PaLM does, not the causal half.
    """
    matmul_params = count_params(cfg).active  # active non-embedding weights + the tied head, counted once
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.seq_len
    return 6.0 * matmul_params + attention
