"""Grad-ECLIP workbench: explain CLIP image-text matches with heat maps and word importance.

Start with ``load_model`` (the embedded synthetic CLIP by default; open_clip ViT and ResNet models,
Hugging Face ``hf:`` checkpoints, OpenAI ``clip`` state dicts) or ``wrap_model`` (a model you built),
then ``explain_image`` for heat maps, ``explain_text`` for word importance and ``compare_models`` for
several models side by side.
"""

from .adapters import UnsupportedMethodError, UnsupportedModelError, get_adapter
from .checkpoints import UnsafeCheckpointError
from .compare import ModelComparison, compare_models
from .config import ExplainConfig
from .errors import GradEclipError
from .explain import explain_image, explain_text
from .loading import LoadedModel, WeightsUnavailableError, load_model, wrap_model
from .methods import list_methods
from .prompts import encode_texts
from .results import ImageExplanation, TextExplanation, WordImportance

__version__ = "0.1.0"

__all__ = [
    "ExplainConfig", "GradEclipError", "ImageExplanation", "LoadedModel", "ModelComparison", "TextExplanation",
    "UnsafeCheckpointError", "UnsupportedMethodError", "UnsupportedModelError", "WeightsUnavailableError",
    "WordImportance", "compare_models", "encode_texts", "explain_image", "explain_text", "get_adapter",
    "list_methods", "load_model", "wrap_model", "__version__",
]
