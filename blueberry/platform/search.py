"""Search parameters: dotted overrides of a `RunConfig`, as Optuna proposes and Tune records them."""

from __future__ import annotations

from typing import Any

from blueberry.core.config import apply_overrides
from blueberry.errors import ConfigError, UserError
from blueberry.models.run import RunConfig


def flat_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Search params as dotted overrides; a `point` param holds several at once (a grid point that
    couples fields, like a model size with its token budget)."""
    flat = {k: v for k, v in params.items() if k != "point"}
    return {**flat, **params.get("point", {})}


def is_config_key(key: str) -> bool:
    """Whether a result column is a config field (`model.x`, `train.y`) rather than a metric."""
    return key.startswith(("model.", "train."))


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """`base` with dotted overrides through any nested config: {"train.muon_lr": 0.01, "model.n_layers": 8}."""
    try:
        return apply_overrides(base, flat_overrides(params))
    except ConfigError as err:
        raise UserError(f"search parameter: {err}") from None
