"""LeGrad (Bousselham, Boggust, Chaybouti, Strobelt and Kuehne, 2024), ported.

Original code: github.com/WalBouss/LeGrad, ``legrad/wrapper.py`` (``LeWrapper.compute_legrad_clip``)
and ``legrad/utils.py`` (the hooked blocks and attention); the defaults here (``layer_index=-2``)
reproduce ``LeWrapper(model)`` on an open_clip ViT.

For every block l from ``layer_index`` (negative: from the end; -2: the last two blocks) to the last:
the tokens leaving block l, averaged over all tokens (the class token included), go through the image
tower's head (final norm and projection) and are unit-normalised: f_l; s_l = cos(f_l, t) with the
unit text embedding t; the map is sum over l of ReLU(d s_l / d A_l) averaged over the heads and over
the query rows of A_l, block l's attention probabilities, at the patch keys. The original upsamples
each block's map bilinearly to the image before summing (the same sum, since upsampling is linear) and
min-max normalises the result; the raw maps here are the patch-grid sum (``heatmaps()`` normalises).

Why a port: the original pins open_clip <= 2.23, whose transformer runs sequence-first; on open_clip
3.x (batch-first) its ``feat_post_mlp.mean(dim=0)`` silently averages over the batch instead of over
the tokens. Here the tokens come from the adapter (``keep_block_outputs``), batch first, and the mean
runs over the tokens. All K targets share one forward pass; the gradients are batched backward passes.

s_l is the explained score (``score``, ``scores.py``) of block l's feature: the cosine by default, or the
logit, the probability among the prompts, a contrast of two prompts, each of the cosines cos(f_l, t).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import to_grid
from .autograd import score_gradients
from .outputs import MapOutput
from .registry import MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, explained_score


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, layer_index: int = -2, chunk: int = 16,
               score: str | ExplainedScore = DEFAULT_SCORE, **_: Any) -> MapOutput:
    """LeGrad maps (B, K, h, w) of the explained ``score`` from block ``layer_index`` to the last, and the
    model's scores (B, K)."""
    score = explained_score(score, adapter)
    try:
        first = adapter.resolve_layers([layer_index], "image")[0]
    except ValueError:
        # a tower without tokens after its blocks (a ResNet's pool) refuses LeGrad by name before the index
        adapter.trace_image(pixels[:1], [], keep_block_outputs=True)
        raise
    blocks = list(range(first, adapter.num_image_blocks))
    trace = adapter.trace_image(pixels, blocks, keep_probs=True, keep_block_outputs=True)
    total = None
    for layer in blocks:
        feature = adapter.image_head(trace.block_outputs[layer].mean(dim=1))  # (B, D)
        scores = score.image_scores(feature, targets)  # (B, K)
        grad, = score_gradients(scores, [trace.blocks[layer].probs], chunk=chunk,
                                retain_graph=layer != blocks[-1])  # (B, K, H, N, N)
        relevance = grad.float().clamp(min=0).mean(dim=(2, 3))[..., 1:]  # heads and query rows; patch keys
        total = relevance if total is None else total + relevance
    return MapOutput(maps=to_grid(total, trace.grid),
                     scores=score.image_scores(trace.embedding, targets).detach())


SPEC = MethodSpec(
    name="legrad", image=image_maps,
    requires=("block_outputs", "probs", "token_head"),
    options={"layer_index": -2, "chunk": 16},
    instead={"layers": "its layer_index option sets the block it starts from"},
    shown=False,
)
