"""The rest of open_clip's zoo: which families these are, and why the ones no adapter explains are refused.

``family(model)`` names the family of a zoo model (for error messages); ``reason(model)`` says why a
refused one is refused: what in its image tower has no Grad-ECLIP counterpart here. timm ViT and Eva
trunks (class-token ViTs, EVA, SigLIP's attention-pool probe) have an adapter (``timm_vit.py``), which
names what it refuses in them itself (q/k norms, register tokens, average pooling, ...); for those
``reason`` is None. What stays here: CoCa, MobileCLIP's FastViT trunks and the other convolutional or
windowed timm trunks.
"""

from __future__ import annotations

from torch import nn

from .timm_vit import TRUNKS as READ_BY_TIMM_VIT  # timm_vit.py reads these (and names what it refuses in them)


def _trunk(model: nn.Module) -> nn.Module | None:
    visual = getattr(model, "visual", None)
    return getattr(visual, "trunk", None) if type(visual).__name__ == "TimmModel" else None


def _is_mobileclip(trunk: nn.Module) -> bool:
    return type(trunk).__name__ in ("FastVit", "MobileOne", "MCi") or "fastvit" in str(getattr(trunk, "default_cfg", ""))


def family(model: nn.Module) -> str | None:
    """The family of a zoo model ("SigLIP", "EVA", "Perception Encoder", "MobileCLIP", "timm-trunk ...",
    "CoCa"), or None."""
    if type(model).__name__ == "CoCa":
        return "CoCa"
    trunk = _trunk(model)
    if trunk is None:
        return None
    kind = type(trunk).__name__
    if getattr(trunk, "global_pool", None) == "map":
        if kind == "Eva":  # open_clip's Eva trunks with a probe: Perception Encoder (PE-Core)
            return "Perception Encoder (timm Eva trunk with an attention-pool probe)"
        return f"SigLIP (timm {kind} trunk with an attention-pool probe)"
    if kind == "Eva":
        return "EVA (timm Eva trunk)"
    if _is_mobileclip(trunk):
        return f"MobileCLIP (timm {kind} trunk)"
    return f"timm-trunk image tower ({kind})"


#: why whole trunk classes are refused
TRUNK_REASONS = {
    "SwinTransformer": ("its timm SwinTransformer trunk attends within shifted local windows and pools by averaging: "
                        "no token attends over the whole image"),
    "ConvNeXt": ("its timm ConvNeXt trunk is a convolutional network pooled by averaging: there is no attention with a "
                 "pooled token for Grad-ECLIP's channel and spatial weights"),
    "VisionTransformerRelPos": ("its timm VisionTransformerRelPos trunk adds a learnt relative-position bias inside "
                                "every attention, which no adapter reads"),
}


def reason(model: nn.Module) -> str | None:
    """Why a zoo model is refused (None for models this file does not refuse)."""
    if type(model).__name__ == "CoCa":
        return ("CoCa's image tower pools with an attentional pooler of 256 queries (the contrastive embedding is "
                "one of its outputs) and its text tower appends a class token for a multimodal decoder; there is no "
                "class-token row to explain")
    trunk = _trunk(model)
    if trunk is None:
        return None
    kind = type(trunk).__name__
    if kind in READ_BY_TIMM_VIT:
        return None
    if _is_mobileclip(trunk):
        return (f"MobileCLIP's image tower is a timm {kind} trunk: reparameterisable convolutions and RepMixer "
                "token mixing, attention only in its last stages over a downsampled grid, pooled by averaging: there "
                "is no pooled token whose attention Grad-ECLIP could weight")
    if kind in TRUNK_REASONS:
        return TRUNK_REASONS[kind]
    if getattr(trunk, "global_pool", None) == "avg" or not hasattr(trunk, "blocks"):
        return (f"its timm {kind} trunk is a convolutional/hybrid network pooled by averaging: there is no "
                "attention with a pooled token for Grad-ECLIP's channel and spatial weights")
    return f"its image tower is a timm {kind} trunk, which no adapter reads"
