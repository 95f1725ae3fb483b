"""GAME, the bi-modal relevance of Chefer, Gur and Wolf (ICCV 2021; docs/method.md section 6.4).

Original code: github.com/hila-chefer/Transformer-MM-Explainability, ``CLIP_explainability.ipynb``
(``interpret``); the defaults here (``target="logit"``) reproduce it, with its ``start_layer`` as
``start_layer`` (its notebook's -1 is ``game_last``, the generic method's all blocks is ``game``).

R = I; for every block from ``start_layer`` to the last, R <- R + mean_heads(clamp(dS/dA * A, min=0)) R,
with A the block's attention probabilities and S what is differentiated: by default the model's logit
exp(logit_scale) * cos(f_I, f_T), as the original differentiates ``logits_per_image``;
``target="cosine"`` differentiates the cosine instead. With one block that only rescales the map; over
several blocks R is not linear in the gradient's scale and the maps differ. Image: the class token's row
over the patches; text: the EOS token's row over all positions. The original method uses all blocks
(``start_layer=0``, the default); the Grad-ECLIP authors ran only the last block (``start_layer=-1``,
registered as ``game_last``). The returned scores are always the cosines. The K targets are processed in
chunks of batched backward passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import to_grid
from .autograd import score_gradients
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec


def _relevance_rows(trace, blocks: list[int], scores: Tensor, chunk: int) -> Tensor:
    """Rows of R at the pooled token (B, K, N) for every target, chunk by chunk."""
    probs = [trace.blocks[layer].probs for layer in blocks]
    count = scores.shape[1]
    rows = torch.arange(scores.shape[0], device=scores.device)
    pieces = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        part = scores[:, start:stop]
        grads = score_gradients(part, probs, chunk=stop - start, retain_graph=stop < count)
        size = probs[0].shape[-1]
        relevance = torch.eye(size, device=scores.device).expand(scores.shape[0], stop - start, size, size)
        for attention, grad in zip(probs, grads):
            cam = (grad.float() * attention.detach().float().unsqueeze(1)).clamp(min=0).mean(dim=2)
            relevance = relevance + cam @ relevance
        pieces.append(relevance[rows, :, trace.token_index])  # (B, k, N)
    return torch.cat(pieces, dim=1)


TARGETS: tuple[str, ...] = ("logit", "cosine")


def _differentiated(adapter: CLIPAdapter, scores: Tensor, target: str) -> Tensor:
    """What GAME differentiates: the logit (exp(logit_scale) x cosine) or the cosine."""
    if target == "logit":
        return adapter.logit_scale * scores
    if target == "cosine":
        return scores
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def _blocks(adapter: CLIPAdapter, start_layer: int, tower: str) -> list[int]:
    first = adapter.resolve_layers([start_layer], tower)[0]
    total = adapter.num_image_blocks if tower == "image" else adapter.num_text_blocks
    return list(range(first, total))


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, start_layer: int = 0, chunk: int = 16,
               target: str = "logit", **_: Any) -> MapOutput:
    """GAME maps (B, K, h, w) from block ``start_layer`` (negative: from the end) to the last."""
    blocks = _blocks(adapter, start_layer, "image")
    trace = adapter.trace_image(pixels, blocks, keep_probs=True)
    scores = cosine_scores(trace.embedding, targets)
    rows = _relevance_rows(trace, blocks, _differentiated(adapter, scores, target), chunk)
    return MapOutput(maps=to_grid(rows[..., 1:], trace.grid), scores=scores.detach())


def last_layer_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, **options: Any) -> MapOutput:
    """GAME on the last block only, as the Grad-ECLIP authors ran it."""
    options.pop("start_layer", None)
    return image_maps(adapter, pixels, targets, start_layer=-1, **options)


def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, start_layer: int = 0,
                    chunk: int = 16, target: str = "logit", **_: Any) -> TokenOutput:
    """GAME text relevance (B, K, L): the EOS row of R for K texts against B image targets."""
    blocks = _blocks(adapter, start_layer, "text")
    trace = adapter.trace_text(tokens, blocks, keep_probs=True)
    scores = cosine_scores(trace.embedding, targets)  # (K, B): texts are the traced batch
    rows = _relevance_rows(trace, blocks, _differentiated(adapter, scores, target), chunk)  # (K, B, L)
    return TokenOutput(relevance=rows.permute(1, 0, 2).detach().float().contiguous(),
                       scores=scores.T.detach().contiguous())


#: the authors' GAME (and game_last): against the bare class name, on the model's centre crop
_AUTHORS = AuthorsProtocol(target="class_name", resolution="model")

SPEC = MethodSpec(
    name="game", image=image_maps, text=token_relevance,
    requires=("probs",), text_requires=("probs",),
    options={"start_layer": 0, "chunk": 16, "target": "logit"},
    authors=_AUTHORS,
)

LAST_SPEC = MethodSpec(
    name="game_last", image=last_layer_maps,
    requires=("probs",),
    options={"chunk": 16, "target": "logit"},
    shown=False,
    authors=_AUTHORS,
)
