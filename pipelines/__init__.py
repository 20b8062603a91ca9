"""The shared video pipeline: one request type, one pipeline object, every mode."""

from pipelines.loading import MODELS, ModelDefaults, ModelNotAvailable
from pipelines.modes import SPECS, animate, connect, extend, loop, restyle, text_to_image, text_to_video
from pipelines.pipeline import GenerationResult, VideoPipeline
from pipelines.request import ConditioningItem, GenerationRequest
from pipelines.samplers import SAMPLERS
from pipelines.sampling import GenerationCancelled

__all__ = [
    "MODELS", "SAMPLERS", "SPECS", "ConditioningItem", "GenerationCancelled", "GenerationRequest",
    "GenerationResult", "ModelDefaults", "ModelNotAvailable", "VideoPipeline", "animate", "connect", "extend",
    "loop", "restyle", "text_to_image", "text_to_video",
]
