"""Model families: one adapter each under the one pipeline, picked by the pipeline class a checkpoint names.

FAMILIES is the registry (a family's name to its adapter); `inspect_model` reads what the CLI and the studio
need to know about a model (its family, defaults, geometry, modes) from its configs, before any weights load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.families.base import Conditions, Configs, Family, Geometry
from pipelines.families.cogvideox import CogVideoX
from pipelines.families.ltx import LTX
from pipelines.families.svd import SVD
from pipelines.families.wan import Wan, WanImageToVideo
from pipelines.loading import ModelDefaults, ModelNotAvailable, read_defaults, resolve_model

FAMILIES: dict[str, type[Family]] = {family.name: family for family in (Wan, WanImageToVideo, LTX, CogVideoX, SVD)}


class UnsupportedModel(ModelNotAvailable):
    """A checkpoint of a pipeline class no family runs."""


def supported() -> str:
    """The families and the diffusers pipelines each runs, for messages."""
    return "; ".join(f"{f.label} ({', '.join(f.pipelines)})" for f in FAMILIES.values())


def family_of(configs: Configs, where: str = "the model") -> type[Family]:
    """The adapter of the pipeline class `model_index.json` names."""
    name = configs.pipeline_class
    family = next((f for f in FAMILIES.values() if name in f.pipelines), None)
    if family is None:
        found = f"a {name}" if name else "no pipeline class"
        raise UnsupportedModel(f"{where} is {found} checkpoint, which this studio does not run; it runs {supported()}")
    return family


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model from its configs alone."""

    folder: Path
    model_id: str
    family: type[Family]
    configs: Configs
    defaults: ModelDefaults
    geometry: Geometry
    modes: dict[str, str | None]  # mode -> None where offered, else why not

    @property
    def offered(self) -> list[str]:
        return [mode for mode, why in self.modes.items() if why is None]


def inspect_model(model: str) -> ModelFacts:
    """A registry name, a diffusers folder or a hub id, resolved and read (no weights loaded)."""
    folder, model_id, registry_defaults = resolve_model(model)
    configs = Configs.of_folder(folder)
    family = family_of(configs, repr(str(folder)))
    defaults = read_defaults(folder, registry_defaults or family.read_defaults(configs))
    return ModelFacts(folder, model_id, family, configs, defaults, family.read_geometry(configs),
                      family.read_modes(configs))


__all__ = ["FAMILIES", "Conditions", "Configs", "Family", "Geometry", "ModelFacts", "UnsupportedModel", "family_of",
           "inspect_model", "supported"]
