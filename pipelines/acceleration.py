"""Speed knobs for a loaded pipeline, each one diffusers' own: the attention backend, `torch.compile` of the
transformer's repeated blocks, and step caching. Each can be measured on its own
(`python -m benchmarks.cuda_wan`).

- Attention: diffusers' attention dispatcher. "auto" takes the first backend that loads on this machine:
  FlashAttention 3, then 2 (when the `flash-attn` package is installed), then cuDNN's fused SDPA, then
  PyTorch's SDPA.
- Compile: `compile_repeated_blocks` compiles one Wan block and reuses it for all 30 (diffusers measured it
  as fast as compiling the whole model, and it compiles far quicker). The first call pays the compile.
- Step cache: First Block Cache (the ParaAttention / TeaCache family). When the first block's residual has
  changed by less than `threshold` (relative L1) since the step that computed the rest, that step reuses the
  cached residual of the other blocks. Outputs change, so it is opt-in and benchmarked with its PSNR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the command line reads these flags before torch is needed
    import torch

# Fastest first; each needs its kernels (flash-attn 3 or 2, cuDNN >= 9 through PyTorch, plain SDPA).
CUDA_ATTENTION_PREFERENCE = ("_flash_3", "flash", "_native_cudnn", "native")


def attention_backends() -> list[str]:
    """Every backend name diffusers' dispatcher knows (not all load on every machine)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [backend.value for backend in AttentionBackendName]


def set_attention(transformer: torch.nn.Module, name: str, device: torch.device) -> str:
    """Route the transformer's attention through backend `name` ("auto" picks the fastest that loads);
    returns the backend in use. Raises ValueError for a name diffusers does not know or that cannot load."""
    known = attention_backends()
    if name != "auto" and name not in known:
        raise ValueError(f"attention backend {name!r} is not known; valid: auto, {', '.join(known)}")
    candidates = (CUDA_ATTENTION_PREFERENCE if device.type == "cuda" else ("native",)) if name == "auto" else (name,)
    errors = []
    for candidate in candidates:
        try:
            transformer.set_attention_backend(candidate)
            return candidate
        except (RuntimeError, ImportError, ValueError) as error:  # its package or kernels are missing here
            errors.append(f"{candidate}: {error}")
    raise ValueError(f"no attention backend could be used ({'; '.join(errors)})")


def compile_blocks(transformer: torch.nn.Module) -> None:
    """torch.compile each repeated block (one compiled graph shared by all of them). A step cache's hook
    branches on data inside the first block, so with one the blocks compile with graph breaks allowed."""
    transformer.compile_repeated_blocks(fullgraph=not caching(transformer))


def enable_step_cache(transformer: torch.nn.Module, threshold: float) -> None:
    """First Block Cache at `threshold` (0.05 to 0.2: larger is faster and further from the uncached output)."""
    from diffusers.hooks import FirstBlockCacheConfig

    check_step_cache(threshold)
    check_cacheable(transformer)
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def check_cacheable(transformer: torch.nn.Module) -> None:
    blocks = block_count(transformer)
    if blocks < 2:
        raise ValueError(f"the step cache needs a denoiser of at least 2 transformer blocks (it runs the first and "
                         f"skips the others when the first barely changed); {type(transformer).__name__} has {blocks}")


def block_count(transformer: torch.nn.Module) -> int:
    """The repeated blocks First Block Cache finds in a transformer (as diffusers' apply_first_block_cache
    looks for them)."""
    import torch
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS

    return sum(len(child) for name, child in transformer.named_children()
               if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList))


def check_step_cache(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"step cache threshold = {threshold} is not valid: between 0 and 1 (0.05 to 0.2 are typical)")


def caching(transformer: torch.nn.Module) -> bool:
    return bool(getattr(transformer, "is_cache_enabled", False))


def add_arguments(parser) -> None:
    """The speed flags of `launch.py` and `launch.py generate`."""
    parser.add_argument("--attention", metavar="BACKEND",
                        help="attention backend: auto (the fastest that loads here) or a diffusers backend name "
                             "such as flash, _native_cudnn, native (default: diffusers' default)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer's repeated blocks (CUDA; the first clip pays the compile)")
    parser.add_argument("--step-cache", type=float, metavar="THRESHOLD",
                        help="First Block Cache: skip most of a step whose first block barely changed "
                             "(0.05-0.2; faster, and the output changes)")


def apply_arguments(pipe, args) -> dict:
    return pipe.accelerate(attention=args.attention, compile=args.compile, step_cache=args.step_cache)
