"""One clip across several processes, under `torchrun`: diffusers' context parallelism on the denoisers, or
the two guidance branches on two ranks.

`torchrun --nproc-per-node N launch.py generate ... --parallel ulysses=U,ring=R` (U * R = N) splits each
denoiser's token sequence across the N ranks (`ContextParallelConfig`, `enable_parallelism`); `--parallel cfg`
(N = 2) runs classifier-free guidance's conditional branch on rank 0 and its unconditional one on rank 1 and
gathers both for every step (the split xDiT calls CFG parallelism; diffusers 0.42 has none). The rest of the
run (text encoding, VAE) is repeated on every rank. Every rank builds the same request with the same seed,
so every rank draws the same noise from the pipeline's seeded generators; only rank 0 writes the output.

What runs where (measured on CPU with gloo, README "One clip on several processes"):
- Ulysses: all-to-all of the heads; gloo has it, so it runs on CPU. The heads must divide by U.
- Ring: needs each attention block's log-sum-exp, which in diffusers 0.42 only the CUDA backends return
  (flash, _native_cudnn, _native_flash, sage); the CPU's `native` backend refuses it. CUDA only.
- Guidance on two ranks (`cfg`): an all-gather of each step's two outputs; gloo has it, so it runs on CPU.
  It stands alone for now (not with ulysses or ring, which would need a process group per branch).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

KINDS = ("ulysses", "ring")


@dataclass(frozen=True)
class Layout:
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1  # 2: the guidance branches on two ranks

    @property
    def ranks(self) -> int:
        return self.ulysses * self.ring * self.cfg


def parse(text: str) -> Layout:
    """`ulysses=U,ring=R` (either may be left out) -> a Layout; ValueError names what is valid."""
    if text.strip() == "cfg":
        return Layout(cfg=2)
    degrees: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        if name == "cfg":
            raise ValueError(f"--parallel {text!r} is not valid: cfg stands alone (--parallel cfg, two ranks), "
                             "not with ulysses or ring")
        if name not in KINDS or not value.isdigit() or int(value) < 1 or name in degrees:
            raise ValueError(f"--parallel {text!r} is not valid: ulysses=U,ring=R with whole numbers >= 1, "
                             "e.g. ulysses=2 or ulysses=2,ring=2; or cfg")
        degrees[name] = int(value)
    layout = Layout(**degrees)
    if layout.ranks == 1:
        raise ValueError(f"--parallel {text!r} splits nothing: give ulysses or ring a degree above 1")
    return layout


def add_arguments(parser) -> None:
    parser.add_argument("--parallel", type=parse, metavar="ulysses=U,ring=R|cfg",
                        help="one clip across the processes of `torchrun --nproc-per-node U*R`: diffusers' context "
                             "parallelism (ring needs CUDA); or cfg: the two guidance branches on 2 processes")


def rank() -> int:
    import torch  # here, not at import: the command line's flags come from this module (cold start)

    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def start(args) -> None:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) and make `args` the same on every rank: a
    device per rank, a shared seed, a memory mode that times nothing on one rank alone."""
    layout = args.parallel
    if layout is None:
        return
    import torch
    import torch.distributed as dist

    if args.mode in ("batch", "storyboard"):
        raise ValueError("--parallel runs one clip: it does not combine with batch or storyboard")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world != layout.ranks:
        raise ValueError(f"--parallel {describe(layout)} needs {layout.ranks} processes: run it "
                         f"under `torchrun --nproc-per-node {layout.ranks} launch.py generate ...` "
                         f"(this run has {world if 'RANK' in os.environ else 'no torchrun'})")
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not cuda and layout.ring > 1:
        raise ValueError("--parallel ring runs on CUDA only: ring attention needs the log-sum-exp that only "
                         "diffusers' CUDA attention backends return; on CPU use ulysses")
    if cuda:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(args.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    if args.memory == "auto":  # the planner would time the denoiser on one rank while the others wait
        args.memory = "full"
    if args.seed is None:  # rank 0's random seed for all, so every rank draws the same noise
        seed = torch.tensor([int.from_bytes(os.urandom(4), "little")], device=args.device if cuda else "cpu")
        dist.broadcast(seed, src=0)
        args.seed = int(seed.item())


def describe(layout: Layout) -> str:
    return "cfg" if layout.cfg > 1 else f"ulysses={layout.ulysses},ring={layout.ring}"


def split_guidance(cond, uncond):
    """This rank's guidance branch (rank 0: conditional, rank 1: unconditional), then both, gathered: every
    rank continues with the same two outputs, so every rank takes the same step."""
    import torch
    import torch.distributed as dist

    mine = (cond if rank() == 0 else uncond)().contiguous()
    both = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(both, mine)
    return both[0], both[1]


def apply(pipe, layout: Layout | None) -> None:
    """Split each denoiser's sequence across the ranks with diffusers' context parallelism (its `_cp_plan`), or
    the guidance branches across two ranks."""
    if layout is None:
        return
    if layout.cfg > 1:
        from pipelines.sampling import GuidedDenoiser

        GuidedDenoiser.split = staticmethod(split_guidance)  # the process is one rank of this run, whole
        if rank() == 0:
            import torch

            print(f"parallel: the guidance branches split over {torch.distributed.get_world_size()} ranks "
                  f"({torch.distributed.get_backend()})")
        return
    from unittest import mock

    import torch
    from diffusers import ContextParallelConfig

    for module in pipe.family.denoisers:
        if getattr(module, "_cp_plan", None) is None:
            raise ValueError(f"--parallel: diffusers has no context-parallel plan for {type(module).__name__} "
                             "(it has one for Wan and LTX)")
        heads = getattr(module.config, "num_attention_heads", None)
        if heads is not None and heads % layout.ulysses:
            raise ValueError(f"--parallel ulysses={layout.ulysses}: {type(module).__name__} has {heads} attention "
                             "heads, which must divide by the ulysses degree")
        config = ContextParallelConfig(ulysses_degree=layout.ulysses, ring_degree=layout.ring)
        if pipe.device.type == "cpu":
            # diffusers picks the rank's device as `rank % torch.accelerator.device_count()`, which divides by
            # zero on a machine without an accelerator; the CPU is one device for every rank.
            with mock.patch("torch.accelerator.device_count", lambda: 1):
                module.enable_parallelism(config=config)
        else:
            module.enable_parallelism(config=config)
    if rank() == 0:
        backend = torch.distributed.get_backend()
        print(f"parallel: {len(pipe.family.denoisers)} denoiser(s) split ulysses={layout.ulysses} ring={layout.ring} "
              f"over {torch.distributed.get_world_size()} ranks ({backend})")


def follower(args) -> bool:
    """Whether this process is a rank other than 0 of a parallel run: it denoises alongside rank 0 and writes
    nothing."""
    return args.parallel is not None and rank() != 0


def check_request(built: Any, args) -> None:
    """A parallel run is one request generated once: every rank must make the same model calls."""
    from pipelines.request import GenerationRequest

    if args.parallel is not None and (not isinstance(built, GenerationRequest) or args.grid):
        raise ValueError("--parallel runs one clip: it does not combine with loop, --grid, batch or storyboard")


def follow(pipe, built: Any) -> int:
    pipe.generate(built)
    return 0
