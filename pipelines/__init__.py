"""The shared video pipeline: one request type, one pipeline object, every mode.

The names below resolve on first use (PEP 562), so that importing a light module of the package (the
request, the registry, the modes) does not import torch and diffusers, which the command line's argument
checks and the studio's page do not need.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "MODELS": "loading", "ModelDefaults": "loading", "ModelNotAvailable": "loading",
    "SPECS": "modes", "animate": "modes", "connect": "modes", "extend": "modes", "loop": "modes",
    "restyle": "modes", "text_to_image": "modes", "text_to_video": "modes",
    "GenerationResult": "pipeline", "VideoPipeline": "pipeline",
    "ConditioningItem": "request", "GenerationRequest": "request",
    "SAMPLERS": "samplers",
    "GenerationCancelled": "sampling",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipelines.{_HOMES[name]}"), name)
    globals()[name] = value  # once resolved, an ordinary module attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
