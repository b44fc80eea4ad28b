"""Configs validate on construction, reject what cannot work with a clear message, and round-trip."""

import re

import pytest

from blueberry.core.config import TrainConfig, replace
from blueberry.errors import ConfigError
from blueberry.models.lm.config import ModelConfig, preset
from blueberry.models.run import RunConfig


@pytest.mark.parametrize("fields, message", [
    (dict(d_model=0), "d_model must be positive"),
    (dict(n_heads=5), "n_heads (5) must divide d_model"),
    (dict(n_kv_heads=3), "n_kv_heads (3) must divide n_heads"),
    (dict(d_model=24, n_heads=8, n_kv_heads=4), "must be even"),
    (dict(mlp="gelu"), "mlp must be one of"),
    (dict(n_experts=4, experts_top_k=5), "experts_top_k"),
])
def test_model_config_rejects(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig(**fields)


@pytest.mark.parametrize("fields, message", [
    (dict(train_tokens=0), "train_tokens must be positive"),
    (dict(batch_size=-1), "batch_size must be positive"),
    (dict(optimizer="sgd"), "optimizer must be one of"),
    (dict(schedule="linear"), "schedule must be one of"),
    (dict(muon_lr=0.0), "muon_lr must be positive"),
    (dict(warmup_frac=1.5), "warmup_frac"),
    (dict(schedule="wsd", warmup_frac=0.5, decay_frac=0.6), "must not exceed 1"),
])
def test_train_config_rejects(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


def test_budget_smaller_than_one_step_is_an_error():
    with pytest.raises(ConfigError, match="smaller than one step"):
        TrainConfig(train_tokens=100, batch_size=8).total_steps(2048)


def test_record_run_is_489_steps():
    # The speedrun's 8,011,776 tokens are exactly 489 steps of 8 x 2048.
    assert TrainConfig().total_steps(2048) == 489


def test_presets_and_unknown_preset():
    assert preset("nano-151m").n_layers == 32 and preset("nano-151m").mlp == "swiglu"
    assert preset("nano-88m").n_layers == 22 and preset("nano-88m").mlp == "relu2"
    with pytest.raises(ConfigError, match="unknown preset 'big'"):
        preset("big")


def test_replace_rejects_unknown_fields_and_revalidates():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        replace(ModelConfig(), n_layer=3)
    with pytest.raises(ConfigError):
        replace(ModelConfig(), n_heads=7)


def test_json_round_trip_and_flatten():
    run = RunConfig(preset("tiny"), TrainConfig(adamw_betas=(0.8, 0.9), target_train_loss=4.5))
    assert RunConfig.from_json(run.to_json()) == run
    flat = run.flatten()
    assert flat["model.d_model"] == 128 and flat["train.adamw_betas"] == [0.8, 0.9]
    assert all(k.startswith(("model.", "train.")) for k in flat)
