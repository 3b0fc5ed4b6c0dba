"""Named detector variants: layers of values over the contract (timm's pretrained-cfg overlays).

>>> cfg = get_model_config("tiny")                        # the tiny variant alone
>>> cfg = resolve_model_config(settings.model)            # doctest: +SKIP  (what the YAML builds)
>>> model = DeepfakeDetector(cfg)                         # doctest: +SKIP

A variant is a dict of sections → values (`MODEL_VARIANTS` in `dagster_deepfake.config`).
`settings.model.registry_config` names one; the keys the YAML sets explicitly win over it,
the rest take the variant's value, and derived sizes follow. `resolve_model_config` is the
one function that turns settings into the config that training, serving's untrained
fallback and `model describe` build.
"""

from __future__ import annotations

import copy
from typing import Any

from dagster_deepfake.config import MODEL_VARIANTS, ModelConfig, resolve_model_config

__all__ = ["get_model_config", "list_model_configs", "register_model_config", "resolve_model_config"]


def register_model_config(name: str, layer: dict[str, dict[str, Any]]) -> None:
    """Register a variant: `layer` maps sections (audio, video, temporal, fusion, classification)
    to the values that differ from the contract."""
    if name in MODEL_VARIANTS:
        raise ValueError(f"model config {name!r} is already registered")
    ModelConfig.model_validate({"registry_config": "contract", **copy.deepcopy(layer)})  # fails early
    MODEL_VARIANTS[name] = copy.deepcopy(layer)


def list_model_configs() -> list[str]:
    return sorted(MODEL_VARIANTS)


def get_model_config(name: str) -> ModelConfig:
    """A fresh copy of the named variant over the contract defaults (callers may mutate it)."""
    if name not in MODEL_VARIANTS:
        raise KeyError(f"unknown model config {name!r}; registered: {', '.join(list_model_configs())}")
    return resolve_model_config(name)
