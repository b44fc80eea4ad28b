"""Configs validate on construction, reject what cannot work with a clear message, round-trip, take dotted
overrides at any depth, and key a run by what determines its result."""

import dataclasses
import re

import pytest

from blueberry.core.config import OBSERVES, TrainConfig, apply_overrides, replace
from blueberry.core.identity import run_key
from blueberry.errors import ConfigError
from blueberry.models.lm.config import BUILTIN_VOCAB_SIZE, ModelConfig, preset
from blueberry.models.run import RunConfig
from blueberry.data import tokenizer


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
    (dict(muon_lr=0.0), "muon_lr must be a positive finite number"),
    (dict(adamw_lr=float("inf")), "adamw_lr must be a positive finite number"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63\)"),
    (dict(seed=2**63), r"seed must be an integer in \[0, 2\*\*63\)"),
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


def test_dotted_overrides_reach_any_nested_config():
    run = apply_overrides(RunConfig(preset("tiny"), TrainConfig()), {"train.muon_lr": 0.01, "model.n_layers": 2,
                                                                     "train.seed": 7})
    assert (run.train.muon_lr, run.train.seed, run.model.n_layers) == (0.01, 7, 2)
    assert run.model.d_model == 128  # untouched fields stay
    with pytest.raises(ConfigError, match="'train.lr' names no field of TrainConfig"):
        apply_overrides(run, {"train.lr": 0.1})
    with pytest.raises(ConfigError, match="train.seed is a value, not a section"):
        apply_overrides(run, {"train.seed.x": 1})
    with pytest.raises(ConfigError, match="n_layers must be positive"):  # each level is validated again
        apply_overrides(run, {"model.n_layers": 0})


def test_run_identity_ignores_what_only_observes():
    run = RunConfig(preset("tiny"), TrainConfig())
    observed = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get(OBSERVES)}
    assert observed == {"eval_every", "eval_at_tokens", "log_every", "checkpoint_every"}
    watched = RunConfig(run.model, replace(run.train, eval_every=7, eval_at_tokens=(5,), log_every=3,
                                           checkpoint_every=5))
    assert watched.key() == run.key() and len(run.key()) == 16
    # Everything that determines the result changes the key: every other field, the data, the kind.
    for name, value in (("muon_lr", 0.01), ("eval_tokens", 1024), ("seed", 1), ("batch_size", 4)):
        assert RunConfig(run.model, replace(run.train, **{name: value})).key() != run.key(), name
    assert run.key(data="a") != run.key(data="b") != run.key()
    assert run_key(run, task="lm") == run.key() != run_key(run, task="another-kind")


def test_the_builtin_vocabulary_matches_the_presets():
    assert tokenizer.BUILTIN_VOCAB_SIZE == BUILTIN_VOCAB_SIZE == preset("tiny").vocab_size
