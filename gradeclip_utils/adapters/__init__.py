"""Model-family adapters: the only code that reaches inside a CLIP implementation.

``get_adapter(model)`` returns the adapter for a model or raises ``UnsupportedModelError`` naming the
model's family. Adding a family means one new file with a ``CLIPAdapter`` subclass, listed in
``ADAPTERS``.
"""

from __future__ import annotations

from torch import nn

from .base import MODES, BlockCapture, CLIPAdapter, Mode, TowerTrace, UnsupportedModelError
from .open_clip_vit import OpenClipViTAdapter, unsupported_reason

ADAPTERS: tuple[type[CLIPAdapter], ...] = (OpenClipViTAdapter,)


def model_family(model: nn.Module) -> str:
    """A human-readable name of a CLIP model's family, for error messages."""
    visual = getattr(model, "visual", None)
    visual_type = type(visual).__name__ if visual is not None else None
    if visual_type == "ModifiedResNet":
        return "ResNet CLIP (attention-pool image tower)"
    if visual_type == "TimmModel":
        trunk = type(getattr(visual, "trunk", None)).__name__
        siglip = " (SigLIP-style)" if getattr(model, "logit_bias", None) is not None else ""
        return f"timm-trunk image tower ({trunk}){siglip}"
    text = getattr(model, "text", None)
    if type(text).__name__ == "HFTextEncoder":
        return "Hugging Face text tower (HFTextEncoder)"
    if type(model).__name__ == "CoCa":
        return "CoCa"
    if type(model).__module__.startswith("transformers"):
        return f"Hugging Face transformers model ({type(model).__name__})"
    if visual_type == "VisionTransformer":
        return "open_clip ViT"
    return type(model).__name__


def get_adapter(model: nn.Module) -> CLIPAdapter:
    """The adapter that explains ``model``; raises ``UnsupportedModelError`` naming its family."""
    if isinstance(model, CLIPAdapter):
        return model
    for adapter in ADAPTERS:
        if adapter.supports(model):
            return adapter(model)
    reason = unsupported_reason(model)
    raise UnsupportedModelError(
        f"Grad-ECLIP has no adapter for this model family: {model_family(model)}"
        + (f" ({reason})" if reason else "")
        + ". Supported: open_clip ViT CLIP models with class-token pooling (for example ViT-B-16 / openai)."
    )


__all__ = [
    "ADAPTERS", "MODES", "BlockCapture", "CLIPAdapter", "Mode", "OpenClipViTAdapter", "TowerTrace",
    "UnsupportedModelError", "get_adapter", "model_family",
]
