"""Grad-CAM on the cross-attention of an image-text matching head (BLIP's ITM), as BLIP's own code computes it.

An image-text matching head (BLIP's ``itm_head``) reads the image through the text encoder's cross-attention:
every text token attends to every image token in every layer, and the head scores the first text token at the
end. Its score (``"itm"``: the probability that image and caption match) does not pass through the image
class token or embedding that the other methods differentiate. For one text-encoder layer ``block`` with
cross-attention probabilities A (H heads, L text tokens, 1 + P image tokens: the class token first) and
their gradient G = dS/dA, the map of a caption is

    map = mean over the caption's word tokens t of mean over heads h of A[h, t, 1:] * clamp(G[h, t, 1:], min=0)

over the P patches (the image class token's column dropped): the rows of the caption's words, between its first
token and its [SEP] (both excluded). That is salesforce's ``compute_gradcam``
(LAVIS, ``lavis/models/blip_models/blip_image_text_matching.py``: the gradient clamped at zero, the attention
not; rows of padding zeroed by the text mask; the heads averaged; the caption's map the sum over rows 1 to n
divided by n, n = the tokens less two), whose BLIP text-localisation demo reads ``block_num=7``, the eighth of
the twelve text layers (ALBEF's visualisation, which BLIP's follows, reads the ninth). ``block`` None is that
eighth layer (index 7), or in a text encoder of fewer than nine layers the one before its last (the last
layer's word rows never reach the head: their map is zero). Nothing further is clamped: A >= 0 and the clamped
G >= 0 make the map non-negative.

``variant``: "score" (default) differentiates the explained score, the match probability p = softmax(l)[1];
"lavis" differentiates the match logit l[1], as ``compute_gradcam`` does (its loss is ``output[:, 1].sum()`` of
the head's logits). The two differ by more than a factor: dp/dA = p (1 - p) (dl[1]/dA - dl[0]/dA). The scores
returned are the match probabilities either way. The model's own ITM forward is transformers' (the caption's
first token is [CLS]: transformers does not swap in salesforce's [ENC]).

Cost: one forward of the image tower without a graph; per image and caption, the text encoder's layers from
``block`` on with a graph and one backward through them (all pairs in one batch: their scores are independent).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ..budget import Cost, image_forward_bytes, map_bytes
from .outputs import MapOutput
from .registry import MethodSpec
from .scores import ExplainedScore, explained_score

VARIANTS: tuple[str, ...] = ("score", "lavis")
#: the text-encoder layer BLIP's text-localisation demo reads (``block_num=7``: the eighth of twelve)
BLIP_BLOCK = 7


def default_block(adapter: CLIPAdapter) -> int:
    """BLIP's layer (``BLIP_BLOCK``), or in a text encoder of fewer than nine layers the one before its last: the
    last layer's word rows never reach the head, which reads only the first token after it (their map is zero)."""
    return min(BLIP_BLOCK, max(0, adapter.num_cross_blocks - 2))


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, score: str | ExplainedScore = "itm",
               block: int | None = None, variant: str = "score", **_: Any) -> MapOutput:
    """Cross-attention Grad-CAM maps (B, K, h, w) of B images and K captions (``targets``: their (K, L) token
    ids, ``prompts.caption_targets``) and the match probabilities (B, K)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    score = explained_score(score, adapter)
    block = default_block(adapter) if block is None else block
    trace = adapter.match_trace(pixels, targets, block)
    explained = trace.probability if variant == "score" else trace.logits[..., 1]
    (grad,) = torch.autograd.grad(explained.sum(), [trace.attention])  # pairs are independent: each its own
    cams = trace.attention.detach()[..., 1:].float() * grad[..., 1:].float().clamp(min=0)  # (B * K, H, L, P)
    cams = cams.mean(dim=1).reshape(*explained.shape, *cams.shape[2:])  # over the heads: (B, K, L, P)
    words = _word_rows(trace.mask)  # (K, L)
    counts = words.sum(dim=1).clamp(min=1).to(cams.dtype)
    maps = torch.einsum("bklp,kl->bkp", cams, words.to(cams.dtype)) / counts[None, :, None]
    maps = maps.reshape(*maps.shape[:2], *trace.grid)
    probability = trace.probability.detach()
    del trace
    return MapOutput(maps=score.kept(maps, dim=1), scores=score.kept(probability.float()))


def _word_rows(mask: Tensor) -> Tensor:
    """(K, L) the rows of each caption's words: its tokens that are not padding, less the first and the last
    ([CLS] and [SEP])."""
    rows = mask.clone()
    rows[:, 0] = False
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # the last token that is not padding
    rows[torch.arange(mask.shape[0], device=mask.device), last] = False
    return rows


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict) -> Cost:
    """One image: its forward without a graph, and per caption the text layers from the explained one on with
    their graph (about 16 floats per token and channel per layer, and the cross-attention's probabilities:
    three copies of H x L x (1 + P)) at BLIP's caption length, and the maps."""
    width, heads = adapter.text.block_shape()
    layers = adapter.num_cross_blocks - (default_block(adapter) if options.get("block") is None
                                         else options["block"] % adapter.num_cross_blocks)
    length, tokens = getattr(adapter, "caption_length", 35), 1 + grid[0] * grid[1]
    per_caption = 4 * layers * (16 * length * width + 3 * heads * length * tokens)
    return Cost(image=image_forward_bytes(adapter, grid, graph_blocks=0) + count * per_caption
                + map_bytes(grid, count))


SPEC = MethodSpec(
    name="itm_gradcam", image=image_maps,
    requires=("cross_attention",),
    alternative="a CLIP has no matching head: explain its cosine with grad_eclip",
    options={"block": None, "variant": "score"},
    scores=("itm",),
    uses=("score",),
    memory=memory,
    shown=False,
)
