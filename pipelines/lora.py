"""LoRA adapters on the loaded model's denoisers, through diffusers' and peft's own adapter support.

A request names its LoRAs (`Lora`: the file, its sha256 and a strength). `Adapters.apply` loads each file once,
keyed by its sha256, with the model's own diffusers LoRA loader (the `lora_state_dict` of its pipeline class,
e.g. `WanLoraLoaderMixin`, which converts the kohya / musubi-tuner and original-checkpoint key layouts to
diffusers'), checks that every layer it adapts exists in the model with the same shapes, and injects it with the
denoiser's `load_lora_adapter`. Per request only `set_adapters` runs (the strengths), or `disable_lora` for none:
switching LoRAs costs no reload. Only .safetensors files are read (a pickled checkpoint can run code).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import torch

    from pipelines.families.base import Family

MAX_LORAS = 8  # per request: far above what people stack (two or three), and each costs a little per step
MAX_STRENGTH = 4.0  # |strength|: community LoRAs run at 0.5-1.5; negative strengths invert slider LoRAs
KEEP_LOADED = 16  # adapters kept injected between requests (each holds its weights in memory)
DENOISERS = ("transformer", "transformer_2", "unet")  # the components that are a checkpoint's denoisers
LORA_FOLDER = Path("loras")  # where Reproduce also looks for a LoRA whose recorded path moved
_SHA256 = re.compile(r"[0-9a-f]{64}")
_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: a large LoRA is hashed once


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (hex), cached while its size and modification time stay the same."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _require(ok: bool, name: str, value: Any, valid: str) -> None:
    from pipelines.request import _require as require  # the requests' one message form

    require(ok, name, value, valid)


@dataclass(frozen=True)
class Lora:
    """One LoRA of a request: its file (where it was; not compared, the sha256 says which weights), the
    file's sha256 and its strength (the multiplier of its update; 0 leaves the model as it is)."""

    path: str = field(compare=False)
    sha256: str
    strength: float = 1.0

    def __post_init__(self) -> None:
        _require(isinstance(self.path, str) and self.path != "", "lora.path", self.path,
                 "a path to a .safetensors LoRA file")
        _require(isinstance(self.sha256, str) and _SHA256.fullmatch(self.sha256) is not None, "lora.sha256",
                 self.sha256, "the file's sha256: 64 lowercase hex digits")
        _require(isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool) and
                 math.isfinite(self.strength) and abs(self.strength) <= MAX_STRENGTH, "lora.strength", self.strength,
                 f"a number in [-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}] (1 is the LoRA as trained, 0 leaves it out)")

    @property
    def name(self) -> str:
        return Path(self.path).name

    @classmethod
    def of_file(cls, path: str | Path, strength: float = 1.0) -> Lora:
        """The LoRA in `path` (made absolute: Reproduce may run from another folder), hashed."""
        path = Path(path)
        _require(path.suffix.lower() == ".safetensors", "lora", str(path),
                 "a .safetensors file (other formats can run code when read)")
        _require(path.is_file(), "lora", str(path), "an existing .safetensors file")
        return cls(str(path.absolute()), sha256_of(path), strength)


def loras_of(value: Any) -> tuple[Lora, ...]:
    """A request's LoRAs from Lora objects or their JSON objects, checked as a whole."""
    _require(isinstance(value, (list, tuple)), "loras", value, "a list of LoRAs (path, sha256, strength)")
    _require(len(value) <= MAX_LORAS, "loras", f"{len(value)} LoRAs", f"at most {MAX_LORAS}")
    keys = {"path", "sha256", "strength"}
    loras = []
    for item in value:
        if isinstance(item, dict):
            _require(set(item) <= keys and {"path", "sha256"} <= set(item), "lora keys", sorted(item),
                     "path, sha256 and optionally strength")
            item = Lora(**item)
        _require(isinstance(item, Lora), "loras", item, "a list of LoRAs (path, sha256, strength)")
        loras.append(item)
    shas = [lora.sha256 for lora in loras]
    _require(len(set(shas)) == len(shas), "loras", [lora.name for lora in loras],
             "each file once (give one LoRA the sum of the strengths)")
    return tuple(loras)


def argument(text: str) -> Lora:
    """`FILE[:STRENGTH]` as the command line gives it (argparse `type`)."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, strength = head, float(tail)
        except ValueError:  # a colon in the file name, and no strength
            path = text
    try:
        return Lora.of_file(path, strength)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def locate(lora: Lora, folders: Iterable[Path]) -> Lora:
    """The LoRA at its recorded path, or else a file with its sha256 in `folders` (the same name first); a
    ValueError says neither holds it."""
    if os.path.isfile(lora.path) and sha256_of(lora.path) == lora.sha256:
        return lora
    searched = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        searched.append(str(folder))
        candidates = sorted(folder.glob("*.safetensors"), key=lambda p: p.name != lora.name)
        for candidate in candidates:
            if sha256_of(candidate) == lora.sha256:
                return Lora(str(candidate.absolute()), lora.sha256, lora.strength)
    there = "holds other weights" if os.path.isfile(lora.path) else "does not exist"
    where = f"; no .safetensors file in {', '.join(searched)} has it either" if searched else ""
    raise ValueError(f"LoRA {lora.name} (sha256 {lora.sha256[:12]}...) is not found: {lora.path} {there}{where}; "
                     f"put that file in {LORA_FOLDER}/ or beside the sidecar")


def misfit(state: dict[str, torch.Tensor], denoiser: torch.nn.Module) -> str | None:
    """Why a LoRA state dict (peft layout, keys relative to the denoiser) does not fit it, or None."""
    adapted: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, value in state.items():
        if "lora" not in key:
            return f"it holds weights that are not LoRA layers ({key})"
        for part in ("lora_A", "lora_B"):
            if key.endswith(f".{part}.weight"):
                adapted.setdefault(key[:-len(f".{part}.weight")], {})[part] = tuple(value.shape)
    if not adapted:
        return "it holds no LoRA layers"
    modules = dict(denoiser.named_modules())
    missing = [name for name in adapted if name not in modules]
    if len(missing) == len(adapted):
        return (f"none of the {len(adapted)} layers it adapts is in this model (such as {missing[0]}): "
                "it was made for another model")
    for name, shapes in adapted.items():
        if name in missing:
            continue
        layer = modules[name]
        weight = getattr(getattr(layer, "base_layer", layer), "weight", None)  # a peft layer wraps the model's
        if "lora_A" not in shapes or "lora_B" not in shapes or weight is None or weight.ndim < 2:
            return f"its layer {name} is not a pair of LoRA matrices on a linear or convolution layer"
        takes, gives = shapes["lora_A"][1], shapes["lora_B"][0]
        if (takes, gives) != (weight.shape[1], weight.shape[0]):
            return (f"it adapts {name} as {takes} -> {gives} features, this model's {name} is {weight.shape[1]} -> "
                    f"{weight.shape[0]}: it was made for another size of model (as a 14B LoRA on a 1.3B model)")
    if missing:
        return (f"{len(missing)} of the {len(adapted)} layers it adapts are not in this model (such as "
                f"{missing[0]}): it was made for another model, or a deeper one of this family")
    return None


def loader_of(pipeline: str, denoisers: Iterable[Any], model_id: str) -> Any:
    """The diffusers LoRA loader mixin of a checkpoint's pipeline class (its `lora_state_dict` converts the
    layouts people share LoRAs in); ValueError when diffusers has none for it."""
    import diffusers

    loader = getattr(diffusers, pipeline, None)
    if loader is None or not hasattr(loader, "lora_state_dict") or \
            not all(hasattr(d, "load_lora_adapter") for d in denoisers):
        raise ValueError(f"{model_id} takes no LoRAs: diffusers has no LoRA loader for {pipeline}")
    return loader


def read(lora: Lora, loader: Any, model_id: str, label: str) -> tuple[dict[str, torch.Tensor], dict | None,
                                                                       str | None]:
    """(state dict in peft's layout, keys relative to the denoiser; diffusers' adapter metadata; the prefix the
    file's keys had) of a LoRA file whose sha256 is the request's."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import SafetensorError

    if not os.path.isfile(lora.path):
        raise ValueError(f"LoRA {lora.path} does not exist")
    found = sha256_of(lora.path)
    if found != lora.sha256:
        raise ValueError(f"LoRA {lora.path} has changed: its sha256 is {found[:12]}..., the request's "
                         f"{lora.sha256[:12]}... (choose the file again)")
    try:  # diffusers' conversions of kohya / musubi-tuner and original-checkpoint layouts happen here
        state, metadata = loader.lora_state_dict(lora.path, use_safetensors=True, local_files_only=True,
                                                 return_lora_metadata=True)
    except (OSError, ValueError, KeyError, IndexError, SafetensorError) as error:
        raise ValueError(f"LoRA {lora.name} cannot be read as a {label} LoRA "
                         f"({str(error)[:200] or type(error).__name__})") from None
    prefix = getattr(loader, "transformer_name", "transformer")
    if any(key.startswith(f"{prefix}.") for key in state):
        others = sorted({key.split(".")[0] for key in state if not key.startswith(f"{prefix}.")})
        if others:
            raise ValueError(f"LoRA {lora.name} does not fit {model_id}: it also adapts {', '.join(others)}, "
                             f"and LoRAs are loaded into the {prefix} only")
        state = {key.removeprefix(f"{prefix}."): value for key, value in state.items()}
    else:
        prefix = None  # saved from the denoiser itself (peft's or diffusers' save_lora_adapter)
    if state and not any("lora_A" in key for key in state):
        state = convert_unet_state_dict_to_peft(state)  # lora_down / lora_up names
    return state, metadata, prefix


def refuse_misfit(lora: Lora, state: dict[str, torch.Tensor], denoisers: Iterable[Any], model_id: str) -> None:
    for denoiser in denoisers:
        why = misfit(state, denoiser)
        if why:
            raise ValueError(f"LoRA {lora.name} does not fit {model_id}: {why}")


def check_fit(loras: tuple[Lora, ...], model: Any) -> None:
    """Refuse a LoRA that does not fit `model` (`pipelines.families.ModelFacts`) before its weights load
    (minutes for a real checkpoint): its denoisers are built from their configs without weights."""
    if not loras:
        return
    import diffusers
    from accelerate import init_empty_weights

    denoisers = []
    for name in DENOISERS:
        module_class = getattr(diffusers, str(model.configs.index[name][1]), None) if model.configs.has(name) else None
        if module_class is not None:  # (a class outside diffusers is checked when the LoRA loads)
            with init_empty_weights():
                denoisers.append(module_class.from_config(model.configs[name]))
    loader = loader_of(model.configs.pipeline_class or model.family.pipelines[0], denoisers, model.model_id)
    for lora in loras:
        refuse_misfit(lora, read(lora, loader, model.model_id, model.family.label)[0], denoisers, model.model_id)


class Adapters:
    """The LoRAs injected into a family's denoisers (each file once, by sha256) and which of them are on."""

    def __init__(self, family: Family, model_id: str):
        self.family = family
        self.model_id = model_id
        self.loaded: OrderedDict[str, str] = OrderedDict()  # sha256 -> adapter name, least recently used first

    def apply(self, loras: tuple[Lora, ...]) -> None:
        """Make `loras` the active adapters at their strengths (none: the base model, bit for bit). A LoRA that
        cannot be read or does not fit raises ValueError naming it and why."""
        for lora in loras:  # each is loaded (and so checked) even at strength 0
            if lora.sha256 not in self.loaded:
                self._load(lora)
            self.loaded.move_to_end(lora.sha256)
        self._evict(keep={lora.sha256 for lora in loras})
        if not self.loaded:
            return  # never given a LoRA: the denoisers are untouched
        on = [lora for lora in loras if lora.strength != 0]  # strength 0 is left out, not multiplied by 0
        for denoiser in self.family.denoisers:
            if on:
                denoiser.enable_lora()
                denoiser.set_adapters([self.loaded[lora.sha256] for lora in on], [lora.strength for lora in on])
            else:
                denoiser.disable_lora()

    def clear(self) -> None:
        """Take every LoRA out of the denoisers (their layers run as before any was loaded)."""
        self._evict(keep=set(), most=0)

    def _evict(self, keep: set[str], most: int = KEEP_LOADED) -> None:
        for sha in [sha for sha in self.loaded if sha not in keep][:max(0, len(self.loaded) - most)]:
            for denoiser in self.family.denoisers:
                denoiser.delete_adapters(self.loaded[sha])
            del self.loaded[sha]

    def _load(self, lora: Lora) -> None:
        from pipelines import memory as memory_modes

        family = self.family
        loader = loader_of(family.configs.pipeline_class or family.pipelines[0], family.denoisers, self.model_id)
        state, metadata, prefix = read(lora, loader, self.model_id, family.label)
        refuse_misfit(lora, state, family.denoisers, self.model_id)
        name = f"lora_{lora.sha256[:16]}"
        metadata = {key.removeprefix(f"{prefix}."): value for key, value in (metadata or {}).items()
                    if prefix is None or key.startswith(f"{prefix}.")} or None
        for denoiser in family.denoisers:
            with warnings.catch_warnings():  # peft's caution about a second adapter: several is the point here
                warnings.filterwarnings("ignore", "Already found a `peft_config`")
                denoiser.load_lora_adapter(dict(state), prefix=None, adapter_name=name, metadata=metadata)
        self.loaded[lora.sha256] = name
        if family.memory.offload == "group":  # new layers: group offloading is laid over them again
            memory_modes.apply(family, family.memory.name)
