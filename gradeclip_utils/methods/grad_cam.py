"""Grad-CAM (Selvaraju et al. 2017) on the tokens entering a block (docs/method.md section 6.3).

For the explained block (default the last), x are the tokens entering it: alpha_c = mean over the
patch tokens of dS/dx_i[c], map_i = ReLU(sum_c alpha_c x_i[c]) over the patch tokens. The last
block's own patch outputs never reach the embedding (only the class token leaves it), so their
gradient is zero: Grad-CAM must use the tokens entering it. Several blocks: ReLU per block, then sum.
All K targets come from one forward pass and batched backward passes.

Original code: github.com/ramprs/grad-cam (CNNs; the channel weight is the gradient averaged over
the spatial positions); for ViT CLIP the default ``variant="model"`` averages over the patch tokens,
as github.com/jacobgil/pytorch-grad-cam does with its ViT ``reshape_transform`` (the class token
dropped). ``variant="authors"``: the Grad-ECLIP authors' Grad-CAM baseline
(github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``: ``grad_cam`` on the outputs of
``clip_encode_dense``), whose mean runs over all tokens, the class token included, and whose score
comes from their forward with the explained block recomputed with one head (Grad-ECLIP's official
mode). Returned scores are always the model's own explained scores.

S is the explained score (``score``, ``scores.py``: the cosine by default, the logit, the probability
among the prompts, a contrast of two prompts); its gradient flows through the score by autograd, K one-hot
cotangents on the K explained scores as on K cosines.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import to_grid
from .autograd import score_gradients
from .outputs import MapOutput
from .registry import AuthorsProtocol, MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, explained_score


VARIANTS: tuple[str, ...] = ("model", "authors")


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, layers: Sequence[int] = (-1,),
               score: str | ExplainedScore = DEFAULT_SCORE, chunk: int = 64, variant: str = "model",
               **_: Any) -> MapOutput:
    """Grad-CAM maps (B, K, h, w) of the explained ``score`` and the scores (B, K)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    score = explained_score(score, adapter)
    first = 0 if variant == "authors" else 1  # the tokens the channel weights average over
    blocks = adapter.resolve_layers(layers, "image")
    mode = "official" if variant == "authors" else "faithful"
    trace = adapter.trace_image(pixels, blocks, mode=mode, keep_block_inputs=True)
    inputs = [trace.blocks[layer].block_input for layer in blocks]
    scores = score.image_scores(trace.embedding, targets)
    grads = score_gradients(scores, inputs, chunk=chunk)
    if variant == "authors":
        with torch.no_grad():
            scores = score.image_scores(adapter.encode_image(pixels), targets)
    total = None
    for x, grad in zip(inputs, grads):
        patches = x[:, 1:].detach().float()
        alpha = grad[:, :, first:].float().mean(dim=2)  # (B, K, C)
        contribution = torch.einsum("bkc,bpc->bkp", alpha, patches).relu()
        total = contribution if total is None else total + contribution
    return MapOutput(maps=to_grid(total, trace.grid), scores=scores.detach())


SPEC = MethodSpec(
    name="grad_cam", image=image_maps,
    requires=("block_inputs",),
    options={"chunk": 64, "variant": "model"},
    authors=AuthorsProtocol(options={"variant": "authors"}),
)
