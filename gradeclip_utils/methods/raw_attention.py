"""Raw self-attention (docs/method.md section 6.1): the pooled token's attention row.

Image: the class token's row over the patch tokens of the explained block(s) (default: the last one;
several blocks are averaged). Text: the EOS token's row over all positions. The map does not depend
on the prompt: every target gets the same map.

Variants (``variant``):
- ``"model"`` (default): the model's own multi-head attention, mean over heads (the usual baseline,
  which has no single original code; it is the first step of attention rollout, docs/method.md section 6.2).
- ``"authors"``: the Grad-ECLIP authors' self-attention baseline (github.com/Cyang-Zhao/Grad-Eclip,
  ``generate_emap.py``: ``clip_encode_dense`` then ``attn[0, :1, 1:]``, the ``"selfattn"`` map of
  ``imagenet_eval_deletion.py``): the explained block recomputed with ONE head of width C (scale
  1/sqrt(C)), as Grad-ECLIP's official mode does, and that head's class-token row. Image only.
Scores are always the model's own cosines (a classifier's: its logits).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import per_target, to_grid
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec
from .scores import own_scores

VARIANTS: tuple[str, ...] = ("model", "authors")


def _mean_rows(trace, blocks: Sequence[int], first_key: int) -> Tensor:
    rows = torch.arange(trace.embedding.shape[0], device=trace.embedding.device)
    total = None
    for layer in blocks:
        probs = trace.blocks[layer].probs.float().mean(dim=1)  # (B, N, N)
        row = probs[rows, trace.token_index, first_key:]
        total = row if total is None else total + row
    return total / len(blocks)


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, layers: Sequence[int] = (-1,),
               variant: str = "model", **_: Any) -> MapOutput:
    """Class-token attention over patches (B, K, h, w), identical for all K targets."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    blocks = adapter.resolve_layers(layers, "image")
    mode = "official" if variant == "authors" else "faithful"
    trace = adapter.trace_image(pixels, blocks, mode=mode, keep_probs=True)
    maps = to_grid(_mean_rows(trace, blocks, first_key=1), trace.grid)
    embedding = adapter.encode_image(pixels) if variant == "authors" else trace.embedding
    return MapOutput(maps=per_target(maps, targets.shape[0]), scores=own_scores(adapter, embedding, targets))


@torch.no_grad()
def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, layers: Sequence[int] = (-1,),
                    variant: str = "model", **_: Any) -> TokenOutput:
    """EOS-token attention over positions (B, K, L) for B image targets, identical for all B."""
    if variant != "model":
        raise ValueError("raw_attention's text relevance has only variant='model' (the authors' variant is "
                         "for images)")
    blocks = adapter.resolve_layers(layers, "text")
    trace = adapter.trace_text(tokens, blocks, keep_probs=True)
    relevance = _mean_rows(trace, blocks, first_key=0)  # (K, L)
    scores = cosine_scores(trace.embedding, targets).T.contiguous()
    return TokenOutput(relevance=relevance.unsqueeze(0).expand(targets.shape[0], -1, -1).contiguous(),
                       scores=scores)


SPEC = MethodSpec(
    name="raw_attention", image=image_maps, text=token_relevance,
    requires=("probs",), text_requires=("probs",),
    options={"variant": "model"},
    instead={"mode": "its variant option ('authors': one head) sets how the attention is read"},
    authors=AuthorsProtocol(options={"variant": "authors"}),
)
