"""Sampler registry: names to factories of diffusers' flow-matching schedulers.

`default` is the checkpoint's own scheduler config (Wan ships UniPC with flow_shift 3.0 at 480p).
`shift` overrides the flow shift of whichever scheduler is chosen. A fresh scheduler is made per request:
multistep schedulers keep state between steps and must not be shared between jobs.
"""

from __future__ import annotations

from typing import Any, Callable

SAMPLERS: dict[str, Callable[[Any, float | None], Any]]


def _checkpoint_shift(checkpoint: Any) -> float:
    return checkpoint.config.get("flow_shift", checkpoint.config.get("shift", 3.0))


def _default(checkpoint: Any, shift: float | None) -> Any:
    overrides = {} if shift is None else {("flow_shift" if "flow_shift" in checkpoint.config else "shift"): shift}
    return type(checkpoint).from_config(checkpoint.config, **overrides)


def _unipc(checkpoint: Any, shift: float | None) -> Any:
    from diffusers import UniPCMultistepScheduler

    config = checkpoint.config
    flow_shift = shift if shift is not None else _checkpoint_shift(checkpoint)
    return UniPCMultistepScheduler(
        num_train_timesteps=config.get("num_train_timesteps", 1000),
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
    )


def _euler(checkpoint: Any, shift: float | None) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow_shift = shift if shift is not None else _checkpoint_shift(checkpoint)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=checkpoint.config.get("num_train_timesteps", 1000),
                                           shift=flow_shift)


SAMPLERS = {"default": _default, "unipc": _unipc, "euler": _euler}


def make_scheduler(name: str, checkpoint: Any, shift: float | None = None) -> Any:
    """A new scheduler object for one request, from the checkpoint's scheduler."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler = {name!r} is not valid: one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](checkpoint, shift)
