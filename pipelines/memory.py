"""Memory modes: where a loaded model's weights live while it generates, through diffusers' and accelerate's
own offloading hooks.

- full: every model resident on the device (fastest).
- low: accelerate's model offload, as diffusers' `enable_model_cpu_offload`: every model waits on the CPU
  and moves whole to the device when its forward runs, the one before it moving back (text encoder, image
  encoder, denoisers, VAE, in that order); the VAE decodes in tiles.
- minimal: diffusers' group offloading at leaf level (`apply_group_offloading`): each layer's weights visit
  the device only for its own call, prefetched on a CUDA stream while the layer before runs; the VAE decodes
  in tiles and the two guidance branches run one after the other, halving the denoiser's activations.

On a CPU the offloading hooks move nothing (the weights are in RAM either way), but they run, and the modes
keep their other savings (tiles, one guidance branch at a time). `pipelines.planner` predicts each mode's
time and peak and picks one (`auto`). This module imports torch only where it moves weights, so that the
command line's flags (`add_arguments`) cost nothing before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pipelines.families.base import Family


@dataclass(frozen=True)
class Profile:
    name: str
    offload: str | None  # None, "model" (accelerate) or "group" (diffusers, leaf level)
    tile_vae: bool  # decode (and encode) in overlapping spatial tiles, the VAE's own tiling
    batched_guidance: bool  # both guidance branches in one batch (False: one after the other)


PROFILES = {
    "full": Profile("full", None, tile_vae=False, batched_guidance=True),
    "low": Profile("low", "model", tile_vae=True, batched_guidance=True),
    "minimal": Profile("minimal", "group", tile_vae=True, batched_guidance=False),
}
MODES = tuple(PROFILES)  # fastest first, least memory last

# The order models run in a generation: accelerate's model offload chains their hooks in this order, so that
# each one's forward sends the one before it back to the CPU (diffusers' `model_cpu_offload_seq`).
RUN_ORDER = ("text_encoder", "image_encoder", "transformer", "transformer_2", "unet", "vae")


def profile(mode: str) -> Profile:
    if mode not in PROFILES:
        raise ValueError(f"memory = {mode!r} is not valid: one of auto, {', '.join(MODES)}")
    return PROFILES[mode]


def modules_of(family: Family) -> dict[str, torch.nn.Module]:
    """The family's weighted components, in the order they run."""
    import torch

    modules = {name: part for name, part in family.parts.items() if isinstance(part, torch.nn.Module)}
    ordered = [name for name in RUN_ORDER if name in modules] + [name for name in modules if name not in RUN_ORDER]
    return {name: modules[name] for name in ordered}


def apply(family: Family, mode: str) -> None:
    """Put the family's models under memory mode `mode`, undoing the mode they were in."""
    import torch

    chosen = profile(mode)
    modules = modules_of(family)
    for module in modules.values():
        _remove_offloading(module)
    device = family.device
    hooks = []
    if chosen.offload is None:
        for module in modules.values():
            module.to(device)
    elif chosen.offload == "model":
        from accelerate import cpu_offload_with_hook

        hook = None
        for module in modules.values():
            module.to("cpu")
            _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
            hooks.append(hook)
    else:
        from diffusers.hooks import apply_group_offloading

        # Streams overlap each layer's upload with the computation of the one before (CUDA only).
        options = dict(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level",
                       use_stream=device.type == "cuda")
        for module in modules.values():
            module.to("cpu")
            if hasattr(module, "enable_group_offload"):  # diffusers models: it reads their `_skip_keys`
                module.enable_group_offload(**options)
            else:
                apply_group_offloading(module, **options)
    vae = family.parts.get("vae")
    if hasattr(vae, "use_tiling"):  # diffusers' VAEs that tile (Stable Video Diffusion's temporal decoder does not)
        vae.enable_tiling() if chosen.tile_vae else vae.disable_tiling()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    family.memory = chosen
    family.offload_hooks = hooks


def release(family: Family) -> None:
    """Send every model back to the CPU after a generation under model offload (the last one to run stays on
    the device until the next one's forward otherwise), as diffusers' `maybe_free_model_hooks` does."""
    for hook in getattr(family, "offload_hooks", ()):
        hook.offload()


def _remove_offloading(module: torch.nn.Module) -> None:
    """Take off accelerate's and diffusers' offloading hooks (a model's other hooks, as a step cache, stay)."""
    from accelerate.hooks import remove_hook_from_module
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import (
        _GROUP_OFFLOADING,
        _LAYER_EXECUTION_TRACKER,
        _LAZY_PREFETCH_GROUP_OFFLOADING,
    )

    remove_hook_from_module(module, recurse=True)
    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
                if registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=False)


# ---- command line -------------------------------------------------------------------------------------
def add_arguments(parser, plan_only: bool = True) -> None:
    """--memory, --low-vram (its older name for low) and, for `launch.py generate`, --plan-only (the planner's
    line alone)."""
    parser.add_argument("--memory", choices=("auto",) + MODES, default="auto",
                        help="where the weights live while generating: full (all on the device, fastest), low "
                             "(each model moves to the device for its own stage; VAE tiling), minimal (layer by "
                             "layer; VAE tiling; guidance branches one after the other), or auto (the fastest "
                             "that the planner predicts fits; default)")
    parser.add_argument("--low-vram", dest="memory", action="store_const", const="low",
                        help="the same as --memory low")
    if plan_only:
        parser.add_argument("--plan-only", action="store_true",
                            help="print the predicted time and peak memory, and the memory mode, then exit")


def load_mode(memory: str) -> str:
    """The mode to load weights under: auto loads as low, so that nothing is on the device before the plan."""
    return "low" if memory == "auto" else memory
