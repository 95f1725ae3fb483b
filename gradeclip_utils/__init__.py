"""Grad-ECLIP workbench: explain CLIP image-text matches with heat maps and word importance.

Start with ``load_model`` (the embedded synthetic CLIP by default, or any open_clip ViT CLIP), then
``explain_image`` for heat maps and ``explain_text`` for word importance.
"""

from .adapters import UnsupportedModelError, get_adapter
from .explain import encode_texts, explain_image, explain_text
from .loading import LoadedModel, UnsafeCheckpointError, WeightsUnavailableError, load_model, wrap_model
from .methods import list_methods
from .results import ImageExplanation, TextExplanation, WordImportance

__version__ = "0.1.0"

__all__ = [
    "ImageExplanation", "LoadedModel", "TextExplanation", "UnsafeCheckpointError", "UnsupportedModelError", "WeightsUnavailableError",
    "WordImportance", "encode_texts", "explain_image", "explain_text", "get_adapter", "list_methods", "load_model",
    "wrap_model", "__version__",
]
