"""Attention rollout (Abnar and Zuidema 2020; docs/method.md section 6.2).

Per block from ``start_layer`` to the last: A = mean over heads of the attention, plus the identity,
rows normalised to sum to 1; the rollout is the product A_last ... A_start, and the map is the class
token's row over the patches. Prompt-independent.

Original code: github.com/samiraabnar/attention_flow (the rollout with the residual added, as
github.com/hila-chefer/Transformer-Explainability's ``compute_rollout_attention`` writes it);
``start_layer=0`` (the default) reproduces it. The Grad-ECLIP authors' rollout
(github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``: ``compute_rollout_attention`` over the
attentions that ``mm_interpret`` collects from its ``start_layer=-1``) covers the last block only:
``start_layer=-1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import per_target, to_grid
from .outputs import MapOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, start_layer: int = 0,
               **_: Any) -> MapOutput:
    """Rollout maps (B, K, h, w) from block ``start_layer`` (negative: from the end) to the last."""
    blocks = adapter.resolve_layers([start_layer], "image")
    blocks = list(range(blocks[0], adapter.num_image_blocks))
    trace = adapter.trace_image(pixels, blocks, keep_probs=True)
    rollout = None
    for layer in blocks:
        attention = trace.blocks[layer].probs.float().mean(dim=1)
        attention = attention + torch.eye(attention.shape[-1], device=attention.device)
        attention = attention / attention.sum(dim=-1, keepdim=True)
        rollout = attention if rollout is None else attention @ rollout
    maps = to_grid(rollout[:, 0, 1:], trace.grid)
    return MapOutput(maps=per_target(maps, targets.shape[0]), scores=cosine_scores(trace.embedding, targets))


SPEC = MethodSpec(
    name="rollout", image=image_maps,
    requires=("probs",),
    options={"start_layer": 0},
    # the authors' rollout: the last block only, against the bare class name, on the model's centre crop
    authors=AuthorsProtocol(options={"start_layer": -1}, target="class_name", resolution="model"),
)
