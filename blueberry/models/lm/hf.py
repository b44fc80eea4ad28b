"""Blueberry in Hugging Face `transformers`: `BlueberryConfig` and `BlueberryForCausalLM`, registered
with `AutoConfig` and `AutoModelForCausalLM` when this module is imported.

    import blueberry.models.lm.hf  # registers model_type "blueberry"
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("exports/my-run")  # no trust_remote_code

This is the `blueberry` export format (`blueberry-export --format blueberry`), the one route for a
model no transformers architecture matches (a relu2 mixture of experts); every other Blueberry
model is also a Qwen3, Qwen3-MoE or Apertus model and loads with no import at all
(`blueberry/models/lm/export.py`). `BlueberryForCausalLM` wraps the native `Blueberry` module, so it
computes exactly what training computed.

`import blueberry` does not import this module: transformers takes seconds to import, and every
Blueberry command would pay for it. Limits: `generate()` recomputes the whole sequence at each step
(no KV cache), and takes no padding (an `attention_mask` with zeros is refused); sequences are at
most `seq_len` tokens.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from blueberry.core.config import from_dict
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import Blueberry, rotary_tables

MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig))


class BlueberryConfig(PretrainedConfig):
    """A `ModelConfig`'s fields as a transformers config (`config.json`), plus transformers' own.
    The usual transformers names (`hidden_size`, `num_hidden_layers`, ...) read Blueberry's."""

    model_type = "blueberry"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads", "intermediate_size": "d_ff", "max_position_embeddings": "seq_len"}

    def __init__(self, **kwargs: Any) -> None:
        defaults = asdict(ModelConfig())
        for name in MODEL_FIELDS:
            setattr(self, name, kwargs.pop(name, defaults[name]))
        kwargs.setdefault("tie_word_embeddings", True)
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` these fields describe (validated: a bad config.json fails here, in one line)."""
        return from_dict(ModelConfig, {name: getattr(self, name) for name in MODEL_FIELDS})


class BlueberryForCausalLM(PreTrainedModel, GenerationMixin):
    """`Blueberry` behind transformers' causal-LM interface. Its state dict is the native module's
    under `model.`; the output head is the embedding, as in training."""

    config_class = BlueberryConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["Block"]

    def __init__(self, config: BlueberryConfig) -> None:
        super().__init__(config)
        self.model = Blueberry(config.model_config())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        # Parameters keep `Blueberry`'s own initialisation (or the checkpoint's values). transformers
        # may build the model on the meta device and load only the checkpoint's tensors, so the RoPE
        # tables, buffers that no checkpoint holds, are filled in here.
        if isinstance(module, Blueberry):
            cfg = module.cfg
            cos, sin = rotary_tables(cfg.head_dim, cfg.seq_len, cfg.rope_base)
            with torch.no_grad():
                module.rope_cos.copy_(cos)
                module.rope_sin.copy_(sin)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        """Logits for `input_ids` (B, T); with `labels`, the mean next-token cross-entropy (labels are
        the inputs, shifted here; -100 is ignored), as every transformers causal LM does."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("BlueberryForCausalLM takes input_ids (not inputs_embeds)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("BlueberryForCausalLM takes no padding (its attention_mask must be all ones): "
                             "run sequences of different lengths one at a time")
        logits = self.model(input_ids).logits  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        # No cache: every step sees the whole sequence so far.
        return {"input_ids": input_ids, "attention_mask": attention_mask}


AutoConfig.register(BlueberryConfig.model_type, BlueberryConfig, exist_ok=True)
AutoModelForCausalLM.register(BlueberryConfig, BlueberryForCausalLM, exist_ok=True)
