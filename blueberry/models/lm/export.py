"""Blueberry language models as Hugging Face `transformers` checkpoints: which architecture each one
is exactly, its `config.json`, and its weights under that architecture's names.

| Blueberry model    | format (`model_type`) | transformers class     | loads with           |
| ------------------ | --------------------- | ---------------------- | -------------------- |
| SwiGLU, dense      | `qwen3`               | `Qwen3ForCausalLM`     | transformers >= 4.51 |
| SwiGLU, MoE        | `qwen3_moe`           | `Qwen3MoeForCausalLM`  | transformers >= 4.51 |
| relu2, dense       | `apertus`             | `ApertusForCausalLM`   | transformers >= 4.56 |
| any                | `blueberry`           | `BlueberryForCausalLM` | `import blueberry.models.lm.hf` first |

Why the first three are the same function, not an approximation (read against transformers 5.24's
`modeling_qwen3.py`, `modeling_qwen3_moe.py`, `modeling_apertus.py`):
- pre-norm blocks, x + attn(norm(x)) then x + mlp(norm(x)), RMSNorm with a gain and no bias:
  `weight * x * rsqrt(mean(x^2) + eps)` (computed in float32, as `nn.RMSNorm` does in float32);
- attention: q, k, v, o projections without bias, grouped-query heads, a per-head RMSNorm on
  queries and keys applied before rotate-half RoPE (inverse frequencies base^(-2i/head_dim)),
  softmax scale 1/sqrt(head_dim), causal; no sliding window;
- MLP: `down(silu(gate(x)) * up(x))` (Qwen3) or `down(relu(up(x))^2)` (Apertus, `hidden_act`
  "relu2", a non-gated MLP);
- MoE (Qwen3-MoE with `norm_topk_prob`): softmax over all experts in float32, top-k, the k weights
  renormalised to sum to 1, every layer sparse, no shared expert; experts are SwiGLU;
- tied input and output embeddings, no embedding scale, no logit soft-cap, final RMSNorm.
The one numerical difference: transformers computes RoPE angles in float32, Blueberry in float64
(then rounds cos and sin to float32), which moves logits by about 1e-6 at short positions and more
near position 2048 (docs/export.md has the measurements).

A relu2 MoE model has no transformers counterpart; it exports in the `blueberry` format, which runs
this package's own `Blueberry` module (`blueberry/models/lm/hf.py`).

Everything here is a pure function of a `ModelConfig` and a state dict; writing the directory is
`blueberry/platform/export.py`'s job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from blueberry.errors import ConfigError
from blueberry.models.lm.config import ModelConfig

FORMATS: tuple[str, ...] = ("qwen3", "qwen3_moe", "apertus", "blueberry")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The import that registers the `blueberry` format with transformers' Auto classes.
BLUEBERRY_IMPORT = "import blueberry.models.lm.hf"

# Minimum transformers version that has each architecture (its first release with the model).
SINCE = {"qwen3": "4.51", "qwen3_moe": "4.51", "apertus": "4.56"}
ARCHITECTURE = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "apertus": "ApertusForCausalLM",
                "blueberry": "BlueberryForCausalLM"}

# Per-block names: Blueberry's -> transformers' (Qwen3 and Qwen3-MoE, Apertus).
_QWEN3_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
_APERTUS_NORMS = {"attn_norm": "attention_layernorm", "mlp_norm": "feedforward_layernorm"}
_ATTENTION = {f"attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")}
_MLP = {"up": "up_proj", "gate": "gate_proj", "down": "down_proj"}


@dataclass(frozen=True)
class HFCheckpoint:
    """One model as transformers reads it: the files' contents, not yet written."""

    format: str  # the `model_type`
    config: dict[str, Any]  # config.json
    generation_config: dict[str, Any]  # generation_config.json
    weights: dict[str, torch.Tensor]  # model.safetensors, under the architecture's names
    requires: str | None  # the import to run before `from_pretrained` (None: transformers has the class)
    description: str  # one paragraph of markdown for the model card: what the architecture is
    max_length: int  # the longest sequence the model takes (its seq_len)


def default_format(cfg: ModelConfig) -> str:
    """The transformers architecture this model is exactly, or `blueberry` when there is none."""
    if cfg.mlp == "swiglu":
        return "qwen3_moe" if cfg.is_moe else "qwen3"
    return "blueberry" if cfg.is_moe else "apertus"


def check_format(cfg: ModelConfig, fmt: str) -> None:
    """Refuse (`ConfigError`, one line) a format that would not compute this model's function."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    exact = default_format(cfg)
    if fmt in ("blueberry", exact):
        return
    holds = {"qwen3": "dense SwiGLU models", "qwen3_moe": "SwiGLU mixtures of experts",
             "apertus": "dense relu2 models"}[fmt]
    kind = f"a {cfg.mlp} {'mixture of experts' if cfg.is_moe else 'dense model'}"
    raise ConfigError(f"--format {fmt} holds only {holds}, not {kind}: use --format {exact}"
                      + ("" if exact == "blueberry" else " (or blueberry)"))


def native_names(cfg: ModelConfig) -> list[str]:
    """The parameter names of `Blueberry(cfg)`'s state dict, from the config alone."""
    mlp = [m for m in _MLP if m != "gate" or cfg.mlp == "swiglu"]
    if cfg.is_moe:
        ffn = ["mlp.router", *(f"mlp.experts.{e}.{m}" for e in range(cfg.n_experts) for m in mlp)]
    else:
        ffn = [f"mlp.{m}" for m in mlp]
    block = ["attn_norm", "mlp_norm", *_ATTENTION, *ffn]
    return ["embed.weight", *(f"blocks.{i}.{b}.weight" for i in range(cfg.n_layers) for b in block),
            "final_norm.weight"]


def weight_names(cfg: ModelConfig, fmt: str) -> dict[str, str]:
    """Every parameter's name in `Blueberry`'s state dict -> its name in a `fmt` checkpoint. The
    output head is the embedding (tied), so it has no entry of its own in either."""
    check_format(cfg, fmt)
    return {name: _hf_name(name, fmt) for name in native_names(cfg)}


def _hf_name(name: str, fmt: str) -> str:
    if fmt == "blueberry":  # BlueberryForCausalLM holds the native module as `model`
        return f"model.{name}"
    if name in ("embed.weight", "final_norm.weight"):
        return {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}[name]
    _, layer, part = name.removesuffix(".weight").split(".", 2)  # blocks.{i}.{part}.weight
    norms = _APERTUS_NORMS if fmt == "apertus" else _QWEN3_NORMS
    if part in norms:
        theirs = norms[part]
    elif part in _ATTENTION:
        theirs = _ATTENTION[part]
    elif part == "mlp.router":
        theirs = "mlp.gate"  # Qwen3-MoE calls its router the gate
    else:  # mlp.{up,gate,down} or mlp.experts.{e}.{up,gate,down}
        module, matrix = part.rsplit(".", 1)
        theirs = f"{module}.{_MLP[matrix]}"
    return f"model.layers.{layer}.{theirs}.weight"


def hf_weights(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], fmt: str,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """`Blueberry`'s state dict under `fmt`'s names, as contiguous CPU tensors of `dtype`."""
    names = weight_names(cfg, fmt)
    if set(state_dict) != set(names):  # a bug, not a user error: the model and `native_names` disagree
        missing, extra = sorted(set(names) - set(state_dict)), sorted(set(state_dict) - set(names))
        raise ValueError(f"state dict does not fit the {fmt} name table: missing {missing[:5]}, extra {extra[:5]}")
    return {names[k]: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}


def native_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """The inverse of `hf_weights`: a checkpoint in `fmt`'s names back to `Blueberry`'s."""
    names = {theirs: ours for ours, theirs in weight_names(cfg, fmt).items()}
    if set(weights) != set(names):
        missing, extra = sorted(set(names) - set(weights)), sorted(set(weights) - set(names))
        raise ConfigError(f"the weights do not fit a {fmt} model of this shape: missing {missing[:3]}, "
                          f"unexpected {extra[:3]}")
    return {names[k]: v for k, v in weights.items()}


def hf_config(cfg: ModelConfig, fmt: str, eos_id: int | None, dtype: str = "float32") -> dict[str, Any]:
    """`config.json` for `fmt`. RoPE is written the way each major transformers version reads it,
    so both read plain RoPE: `rope_parameters` (5.x), `rope_theta` with `rope_scaling: null` (4.x;
    without them Apertus would apply its default llama3 frequency scaling)."""
    check_format(cfg, fmt)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    common = {"architectures": [ARCHITECTURE[fmt]], "model_type": fmt, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": None,
              "dtype": dtype, "torch_dtype": dtype}
    if fmt == "blueberry":
        return {**common, **asdict(cfg), "use_cache": False}
    config = {
        **common,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu" if cfg.mlp == "swiglu" else "relu2",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if fmt in ("qwen3", "qwen3_moe"):
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers,
                      layer_types=["full_attention"] * cfg.n_layers)
    if fmt == "qwen3_moe":
        config.update(num_experts=cfg.n_experts, num_experts_per_tok=cfg.experts_top_k, moe_intermediate_size=cfg.d_ff,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
                      router_aux_loss_coef=cfg.moe_aux_loss_weight)
    return config


def describe(cfg: ModelConfig, fmt: str) -> str:
    """One paragraph for the model card: the architecture and why it computes Blueberry's function."""
    shape = (f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} query / {cfg.n_kv_heads} key-value heads "
             f"of {cfg.head_dim}, {cfg.mlp} MLP of {cfg.d_ff}"
             + (f", {cfg.n_experts} experts (top {cfg.experts_top_k})" if cfg.is_moe else "")
             + f", vocabulary {cfg.vocab_size}, context {cfg.seq_len}, RoPE base {cfg.rope_base:g}, "
             f"RMSNorm eps {cfg.norm_eps:g}")
    same = ("pre-norm RMSNorm blocks, grouped-query attention with a per-head RMSNorm on queries and keys "
            "before rotate-half RoPE, tied embeddings, no biases")
    text = {
        "qwen3": f"`Qwen3ForCausalLM` (transformers >= {SINCE['qwen3']}). Blueberry's SwiGLU transformer is "
                 f"Qwen3 exactly: {same}, MLP down(silu(gate(x)) * up(x)).",
        "qwen3_moe": f"`Qwen3MoeForCausalLM` (transformers >= {SINCE['qwen3_moe']}). Blueberry's SwiGLU "
                     f"mixture of experts is Qwen3-MoE exactly: {same}; softmax routing over all experts, top "
                     "k, weights renormalised (`norm_topk_prob`), every layer sparse, no shared expert.",
        "apertus": f"`ApertusForCausalLM` (transformers >= {SINCE['apertus']}) with `hidden_act: relu2`. "
                   f"Blueberry's squared-ReLU transformer is Apertus exactly: {same}, non-gated MLP "
                   "down(relu(up(x))^2).",
        "blueberry": "`BlueberryForCausalLM`, Blueberry's own module behind transformers' interface: "
                     f"`{BLUEBERRY_IMPORT}` registers it with the Auto classes (no `trust_remote_code`). "
                     "`generate()` works without a KV cache (each step recomputes the sequence) and without "
                     "padding.",
    }[fmt]
    return f"{text} Shape: {shape}."


def to_hf(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], fmt: str | None = None, eos_id: int | None = None,
          dtype: str = "float32") -> HFCheckpoint:
    """A Blueberry model's config and weights as a `fmt` checkpoint (default: `default_format`)."""
    fmt = fmt or default_format(cfg)
    config = hf_config(cfg, fmt, eos_id, dtype)
    generation = {"bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": eos_id,
                  "use_cache": config["use_cache"]}
    return HFCheckpoint(format=fmt, config=config, generation_config=generation,
                        weights=hf_weights(cfg, state_dict, fmt, DTYPES[dtype]),
                        requires=BLUEBERRY_IMPORT if fmt == "blueberry" else None, description=describe(cfg, fmt),
                        max_length=cfg.seq_len)
