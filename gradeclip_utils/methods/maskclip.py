"""MaskCLIP (Zhou, Loy and Dai, ECCV 2022; method.md 5.5).

Dense patch features through the value path of the last block, skipping the query-key mixing:
u_i = x_i + out_proj(v_i), then the block's MLP, the final norm and the projection; the map is the
cosine of each patch feature with the target text embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import cosine_scores, to_grid
from .grad_eclip import MapOutput


def dense_similarity(features: Tensor, targets: Tensor) -> Tensor:
    """cos(feature_i, target_k) as (B, K, P) float32."""
    return torch.einsum("bpd,kd->bkp", F.normalize(features.float(), dim=-1), targets.float())


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, **_: Any) -> MapOutput:
    """MaskCLIP maps (B, K, h, w): cosine of each value-path patch feature with each target."""
    embedding, features = adapter.value_path_features(pixels)
    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    return MapOutput(maps=to_grid(dense_similarity(features, targets), grid),
                     scores=cosine_scores(embedding, targets))
