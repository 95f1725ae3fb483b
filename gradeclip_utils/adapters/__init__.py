"""Model-family adapters: the only code that reaches inside a CLIP implementation (or an image classifier's).

``get_adapter(model)`` returns the adapter for a model or raises ``UnsupportedModelError`` naming the
model's family and the reason. Each family is one file with ``recognises(model)`` (does the model
belong to it) and ``build(model)`` (its ``CLIPAdapter``, or ``UnsupportedModelError`` with the reason),
listed in ``FAMILIES``. The transformer engine (``transformer.py``) and the ResNet attention-pool tower
(``resnet.py``) are shared by the families that have such towers.
"""

from __future__ import annotations

from torch import nn

from . import hf_blip, hf_clip, hf_siglip, hf_vit, openai_clip, openclip, timm_classifier, timm_vit, torchvision_vit, zoo
from .base import (CAPTURES, MODES, BlockCapture, BlockSteps, CLIPAdapter, ImageTower, Mode, TextTower, TowerTrace,
                   UnsupportedMethodError, UnsupportedModelError)
from .classifier import ClassifierAdapter

#: the families, in the order they are tried: open_clip models with a timm image tower (TimmModel) belong
#: to timm_vit, which is tried before the generic open_clip family (that one reads open_clip's own towers);
#: the image classifiers (Hugging Face ViTForImageClassification, timm and torchvision VisionTransformer) come last
FAMILIES = (timm_vit, openclip, hf_blip, hf_clip, hf_siglip, openai_clip, hf_vit, timm_classifier, torchvision_vit)
#: the families whose models are image classifiers (``classifier.ClassifierAdapter``)
CLASSIFIER_FAMILIES = (hf_vit, timm_classifier, torchvision_vit)

SUPPORTED = ("open_clip ViT and ResNet CLIP models (OpenAI and LAION weights), open_clip models with a timm ViT image "
             "tower (class-token ViTs such as MobileCLIP-B, EVA/EVA02, SigLIP/SigLIP2's attention-pool probe), Hugging "
             "Face transformers CLIPModel "
             "(or a CLIPVisionModelWithProjection + CLIPTextModelWithProjection pair), Hugging Face SiglipModel (SigLIP "
             "and fixed-resolution SigLIP 2), Hugging Face BLIP (BlipForImageTextRetrieval: its contrastive cosine and "
             "its matching probability), OpenAI clip package "
             "models (ViT and ResNet), and ViT image classifiers with a class-token head (Hugging Face "
             "ViTForImageClassification, timm and torchvision VisionTransformer)")


def model_family(model: nn.Module) -> str:
    """A human-readable name of a CLIP model's family, for error messages."""
    named = zoo.family(model)
    if named:
        return named
    text = getattr(model, "text", None)
    if type(text).__name__ == "HFTextEncoder":
        return "open_clip with a Hugging Face text tower (HFTextEncoder)"
    if hf_vit.recognises(model) or timm_classifier.recognises(model) or torchvision_vit.recognises(model):
        return f"{type(model).__module__.split('.')[0]} image classifier ({type(model).__name__})"
    if type(model).__module__.startswith("transformers"):
        return f"Hugging Face transformers model ({type(model).__name__})"
    visual = getattr(model, "visual", None)
    if type(visual).__name__ == "VisionTransformer":
        return "open_clip ViT" if openclip.recognises(model) else "ViT CLIP"
    return type(model).__name__


def get_adapter(model: nn.Module) -> CLIPAdapter:
    """The adapter that explains ``model``; raises ``UnsupportedModelError`` naming its family."""
    if isinstance(model, CLIPAdapter):
        return model
    reason = None
    for family in FAMILIES:
        if family.recognises(model):
            try:
                return family.build(model)
            except UnsupportedModelError as error:
                reason = zoo.reason(model) or str(error)
                break
    if reason is None:
        reason = zoo.reason(model) or openclip.unsupported_reason(model)
    raise UnsupportedModelError(
        f"Grad-ECLIP has no adapter for this model family: {model_family(model)}"
        + (f" ({reason})" if reason else "") + f". Supported: {SUPPORTED}.")


__all__ = [
    "CAPTURES", "FAMILIES", "MODES", "BlockCapture", "BlockSteps", "CLIPAdapter", "ClassifierAdapter", "ImageTower",
    "Mode", "TextTower", "TowerTrace", "UnsupportedMethodError", "UnsupportedModelError", "get_adapter",
    "model_family",
]
