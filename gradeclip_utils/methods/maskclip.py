"""MaskCLIP (Zhou, Loy and Dai, ECCV 2022; docs/method.md section 6.5).

Original code: github.com/chongzhou96/MaskCLIP, ``mmseg/models/backbones/vit.py`` (the last layer's
``return_qkv`` path) and ``mmseg/models/decode_heads/maskclip_head.py`` (``proj`` of ``v``); the default
``variant="model"`` computes what they compute for a ViT: dense patch features through the value path
of the last block, skipping the query-key mixing: u_i = x_i + out_proj(v_i), then the block's MLP, the
final norm and the projection; the map is the cosine of each patch feature with the target text
embedding.

``variant="authors"``: the Grad-ECLIP authors' MaskCLIP baseline (github.com/Cyang-Zhao/Grad-Eclip,
``generate_emap.py``: ``mask_clip``), the same cosine multiplied by cos(k_cls, k_i), with k the last
block's keys taken through its output projection (weight and bias), as their ``clip_encode_dense``
computes ``k_out``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import to_grid
from .outputs import MapOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec

VARIANTS: tuple[str, ...] = ("model", "authors")


def dense_similarity(features: Tensor, targets: Tensor) -> Tensor:
    """cos(feature_i, target_k) as (B, K, P) float32."""
    return torch.einsum("bpd,kd->bkp", F.normalize(features.float(), dim=-1), targets.float())


def key_similarity(adapter: CLIPAdapter, pixels: Tensor) -> Tensor:
    """cos(out_proj(k_cls), out_proj(k_i)) over the patches i of the last block: (B, P) float32."""
    last = adapter.num_image_blocks - 1
    capture = adapter.trace_image(pixels, [last]).blocks[last]
    bias = None if capture.out_proj_bias is None else capture.out_proj_bias.float()
    keys = F.linear(capture.k.float(), capture.out_proj_weight.float(), bias)
    return F.cosine_similarity(keys[:, :1], keys[:, 1:], dim=-1)


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, variant: str = "model",
               **_: Any) -> MapOutput:
    """MaskCLIP maps (B, K, h, w): cosine of each value-path patch feature with each target."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    embedding, features = adapter.value_path_features(pixels)
    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    maps = dense_similarity(features, targets)
    if variant == "authors":
        maps = maps * key_similarity(adapter, pixels)[:, None, :]
    return MapOutput(maps=to_grid(maps, grid), scores=cosine_scores(embedding, targets))


SPEC = MethodSpec(
    name="maskclip", image=image_maps,
    requires=("joint_space", "value_path"),
    options={"variant": "model"},
    authors=AuthorsProtocol(options={"variant": "authors"}),
)
