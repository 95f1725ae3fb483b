"""The image-text similarity map (ITSM, Li et al. 2022; docs/method.md section 6.9).

Cosine of the target text embedding with every final patch token after the image tower's final norm
and projection (the head the class token goes through).

Original code: github.com/xmed-lab/CLIP_Surgery (``demo.py``, "Explain raw predictions of CLIP":
``image_features @ text_features.t()`` over the patch tokens of the plain CLIP, its image features
unit-normalised); this function computes it (no options).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import to_grid
from .maskclip import dense_similarity
from .outputs import MapOutput, cosine_scores
from .registry import MethodSpec


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, **_: Any) -> MapOutput:
    """ITSM maps (B, K, h, w) and scores (B, K)."""
    trace = adapter.trace_image(pixels, [], keep_final_tokens=True)
    features = adapter.image_head(trace.final_tokens[:, 1:])
    return MapOutput(maps=to_grid(dense_similarity(features, targets), trace.grid),
                     scores=cosine_scores(trace.embedding, targets))


SPEC = MethodSpec(
    name="itsm", image=image_maps,
    requires=("joint_space", "final_tokens", "token_head"),
    alternative="use maskclip, the value-path features, instead",
)
