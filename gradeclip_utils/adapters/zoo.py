"""The rest of open_clip's zoo: which families these are, and why they are refused.

Each entry names a family that open_clip builds (offline, with random weights) and that no adapter
explains, with the reason: what in its image tower has no Grad-ECLIP counterpart here. A family that
gains an adapter moves out of this file into its own.
"""

from __future__ import annotations

from torch import nn


def _trunk(model: nn.Module) -> nn.Module | None:
    visual = getattr(model, "visual", None)
    return getattr(visual, "trunk", None) if type(visual).__name__ == "TimmModel" else None


def family(model: nn.Module) -> str | None:
    """The family of a zoo model ("SigLIP", "EVA", "MobileCLIP", "timm-trunk ...", "CoCa"), or None."""
    if type(model).__name__ == "CoCa":
        return "CoCa"
    trunk = _trunk(model)
    if trunk is None:
        return None
    kind = type(trunk).__name__
    if getattr(model, "logit_bias", None) is not None or getattr(trunk, "global_pool", None) == "map":
        return f"SigLIP (timm {kind} trunk with an attention-pool probe)"
    if kind == "Eva":
        return "EVA (timm Eva trunk)"
    if kind in ("FastVit", "MobileOne", "MCi", "MobileCLIP") or "fastvit" in str(getattr(trunk, "default_cfg", "")):
        return f"MobileCLIP (timm {kind} trunk)"
    return f"timm-trunk image tower ({kind})"


def reason(model: nn.Module) -> str | None:
    """Why a zoo model is refused (None for models this file does not know)."""
    if type(model).__name__ == "CoCa":
        return ("CoCa's image tower pools with an attentional pooler of 256 queries (the contrastive embedding is "
                "one of its outputs) and its text tower appends a class token for a multimodal decoder; there is no "
                "class-token row to explain")
    trunk = _trunk(model)
    if trunk is None:
        return None
    kind = type(trunk).__name__
    if getattr(trunk, "global_pool", None) == "map":
        return ("its timm trunk pools with a multi-head attention probe (AttentionPoolLatent) over patch tokens "
                "that have no class token; no adapter reads the timm probe yet")
    if kind == "Eva":
        return ("EVA's blocks rotate q and k with rotary position embeddings and use SwiGLU MLPs inside timm's Eva "
                "trunk; no adapter reads timm's Eva blocks yet")
    if getattr(trunk, "global_pool", None) == "avg" or not hasattr(trunk, "blocks"):
        return (f"its timm {kind} trunk is a convolutional/hybrid network pooled by averaging: there is no "
                "attention with a pooled token for Grad-ECLIP's channel and spatial weights")
    return f"its image tower is a timm {kind} trunk, which no adapter reads"
