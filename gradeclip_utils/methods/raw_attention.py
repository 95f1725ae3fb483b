"""Raw self-attention (method.md 5.1): the pooled token's attention row, mean over heads.

Image: the class token's row over the patch tokens of the explained block(s) (default: the last one;
several blocks are averaged). Text: the EOS token's row over all positions. The map does not depend
on the prompt: every target gets the same map. Always the model's own multi-head attention.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import cosine_scores, per_target, to_grid
from .grad_eclip import MapOutput, TokenOutput


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
               **_: Any) -> MapOutput:
    """Class-token attention over patches (B, K, h, w), identical for all K targets."""
    blocks = adapter.resolve_layers(layers, "image")
    trace = adapter.trace_image(pixels, blocks, keep_probs=True)
    maps = to_grid(_mean_rows(trace, blocks, first_key=1), trace.grid)
    return MapOutput(maps=per_target(maps, targets.shape[0]), scores=cosine_scores(trace.embedding, targets))


@torch.no_grad()
def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, layers: Sequence[int] = (-1,),
                    **_: Any) -> TokenOutput:
    """EOS-token attention over positions (B, K, L) for B image targets, identical for all B."""
    blocks = adapter.resolve_layers(layers, "text")
    trace = adapter.trace_text(tokens, blocks, keep_probs=True)
    relevance = _mean_rows(trace, blocks, first_key=0)  # (K, L)
    scores = cosine_scores(trace.embedding, targets).T.contiguous()
    return TokenOutput(relevance=relevance.unsqueeze(0).expand(targets.shape[0], -1, -1).contiguous(),
                       scores=scores)
