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
registered as ``game_last``). The K targets are processed in chunks of batched backward passes, one
block at a time (memory: see ``_relevance_rows``).

The explained score (``score``, ``scores.py``) is what S is made of: the cosine by default, the logit, the
probability among the prompts (on the text side among the captions given for an image) or a contrast of
two prompts (image side). ``target`` says at which scale a score of cosines is differentiated: "logit"
(default) multiplies the cosine and the contrast by the logit scale, as Chefer et al. differentiate
logits (the logit and the probability already carry it, and are differentiated as they are); "cosine"
differentiates the cosine or the contrast as it is, and is refused with the logit and the probability
(it would not change their maps). The returned scores are the explained scores, never multiplied by the
scale (the cosines by default).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..adapters import BlockSteps, CLIPAdapter
from ..budget import Cost, backward_bytes, explicit_bytes, image_forward_bytes, map_bytes, tokens, tokens_bytes
from ._common import to_grid
from .autograd import batched_vjp, one_hot_cotangents
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec
from .scores import DEFAULT_SCORE, SCALED, ExplainedScore, explained_score


def _relevance_rows(steps: BlockSteps, total: int, targets: Tensor, explained: Callable[[Tensor, Tensor], Tensor],
                    factor: float, count: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Rows of R at the pooled token (B, K, N) for the K explained scores of the ``targets``, and the
    explained scores (B, K): ``explained(embedding, targets)`` gives them, ``factor`` times them is what is
    differentiated (the logit scale, or 1).

    Only the pooled token's row of R = (I + cam_last) ... (I + cam_first) is used, so it is accumulated
    from the last block down, r <- r (I + cam_b), in the order the backward pass reaches the blocks:
    the same product as the full matrices R <- R + cam_b R from the first block up, without holding
    an N x N matrix per target. The forward runs once without a graph, keeping only the tokens entering
    each block; then, for every chunk of targets, each block from the last down is recomputed from its
    input with its graph and the cotangent is pulled through that block alone. So memory holds one
    block's graph and one block's attention gradients for one chunk of targets at a time, plus the
    (B, N, C) tokens entering each block, instead of every block's graph and gradients at once; the
    price is the recomputed blocks (one more forward per chunk, without the backward's cost).
    """
    blocks = list(range(steps.first, total))
    with torch.no_grad():
        inputs = [steps.tokens]
        for layer in blocks[:-1]:
            inputs.append(steps.step(layer, inputs[-1])[0])
    batch, size = inputs[0].shape[:2]
    images = torch.arange(batch, device=inputs[0].device)
    scores = None
    pieces = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        row = torch.zeros(batch, stop - start, size, device=inputs[0].device)
        row[images, :, steps.token_index] = 1.0
        cotangent = None
        for layer, tokens in zip(reversed(blocks), reversed(inputs)):
            with torch.enable_grad():
                # a leaf that requires grad: the graph exists whatever the parameters' flags
                leaf = tokens.detach().requires_grad_(True)
                out, attention = steps.step(layer, leaf)
                if layer == blocks[-1]:  # ``out`` is the embedding
                    values = explained(out, targets)
                    if scores is None:
                        scores = values.detach()
                    out = (values if factor == 1 else factor * values)[:, start:stop]
                    pull = one_hot_cotangents(out)
                else:
                    def pull(first: int, last: int, cot: Tensor = cotangent) -> Tensor:
                        return cot[first:last]
                wanted = [attention] if layer == blocks[0] else [attention, leaf]
                grads = batched_vjp(out, wanted, pull, stop - start, stop - start)
            attention_grad, cotangent = grads[0], (grads[1] if len(grads) > 1 else None)
            del grads, out
            # in place: the gradient is not needed after this (the same numbers as out of place)
            cam = attention_grad.float().mul_(attention.detach().float()).clamp_(min=0).mean(dim=2)  # (k, B, N, N)
            del attention_grad, attention
            row = row + (row.unsqueeze(-2) @ cam.transpose(0, 1)).squeeze(-2)
            del cam
        pieces.append(row)
    return torch.cat(pieces, dim=1), scores


TARGETS: tuple[str, ...] = ("logit", "cosine")


def _factor(adapter: CLIPAdapter, score: ExplainedScore, target: str) -> float:
    """What the explained score is multiplied by before it is differentiated: the logit scale (exp(logit_scale))
    for a score of cosines with ``target="logit"``, else 1 (see the module docstring)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if score.name in SCALED:
        if target == "cosine":
            raise ValueError(f"game's target='cosine' differentiates a score of cosines without the logit scale; "
                             f"score={score.name!r} carries the scale itself, so target would not change its map: "
                             "leave target at its default")
        return 1
    return adapter.logit_scale if target == "logit" else 1


def _explained(adapter: CLIPAdapter, score: str | ExplainedScore, target: str,
               tower: str) -> tuple[ExplainedScore, Callable[[Tensor, Tensor], Tensor], float]:
    """The explained score, as a function of ``tower``'s embedding and the targets, and the factor it is
    differentiated at."""
    score = explained_score(score, adapter)

    def texts(embedding: Tensor, targets: Tensor) -> Tensor:
        return score.of_texts(cosine_scores(embedding, targets))

    return score, (score.image_scores if tower == "image" else texts), _factor(adapter, score, target)


def _first(adapter: CLIPAdapter, start_layer: int, tower: str) -> int:
    return adapter.resolve_layers([start_layer], tower)[0]


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, start_layer: int = 0, chunk: int = 16,
               target: str = "logit", score: str | ExplainedScore = DEFAULT_SCORE, **_: Any) -> MapOutput:
    """GAME maps (B, K, h, w) of the explained ``score`` from block ``start_layer`` (negative: from the end)
    to the last."""
    score, explained, factor = _explained(adapter, score, target, "image")
    count = score.count(targets.shape[0])
    steps = adapter.image_steps(pixels, _first(adapter, start_layer, "image"))
    rows, scores = _relevance_rows(steps, adapter.num_image_blocks, targets, explained, factor, count, chunk)
    return MapOutput(maps=to_grid(rows[..., 1:], steps.grid), scores=scores)


def last_layer_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, **options: Any) -> MapOutput:
    """GAME on the last block only, as the Grad-ECLIP authors ran it."""
    options.pop("start_layer", None)
    return image_maps(adapter, pixels, targets, start_layer=-1, **options)


def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, start_layer: int = 0,
                    chunk: int = 16, target: str = "logit", score: str | ExplainedScore = DEFAULT_SCORE,
                    **_: Any) -> TokenOutput:
    """GAME text relevance (B, K, L): the EOS row of R for K texts against B image targets, of the explained
    ``score`` (the probability: among the K texts for each image)."""
    _, explained, factor = _explained(adapter, score, target, "text")
    steps = adapter.text_steps(tokens, _first(adapter, start_layer, "text"))
    # (K, B, L) and (K, B): texts are the stepped batch, the B images the explained columns
    rows, scores = _relevance_rows(steps, adapter.num_text_blocks, targets, explained, factor, targets.shape[0],
                                   chunk)
    return TokenOutput(relevance=rows.permute(1, 0, 2).detach().float().contiguous(),
                       scores=scores.T.contiguous())


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict[str, Any]) -> Cost:
    """One image: the tokens entering each block from ``start_layer`` on, its forward (those blocks computed
    explicitly) and one block recomputed with its graph, and its K maps. Each target of a backward pass
    (``chunk`` of them, at most K), per image: its cotangent pulled back through one block, its cotangent
    for the block's input and its N x N relevance term (float32) (``budget.py``)."""
    blocks = adapter.num_image_blocks - _first(adapter, options.get("start_layer", 0), "image")
    image = (blocks * tokens_bytes(adapter, grid) + image_forward_bytes(adapter, grid, graph_blocks=1)
             + explicit_bytes(adapter, grid) + map_bytes(grid, count))
    unit = backward_bytes(adapter, grid) + tokens_bytes(adapter, grid) + 4 * tokens(grid) ** 2
    return Cost(image=image, unit=unit, option="chunk", limit=min(options["chunk"], count),
                unit_name="target per backward pass")


def _last_memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict[str, Any]) -> Cost:
    return memory(adapter, grid, count, {**options, "start_layer": -1})


#: the authors' GAME (and game_last): against the bare class name, on the model's centre crop
_AUTHORS = AuthorsProtocol(target="class_name", resolution="model")

SPEC = MethodSpec(
    name="game", image=image_maps, text=token_relevance,
    requires=("probs",), text_requires=("probs",),
    options={"start_layer": 0, "chunk": 16, "target": "logit"},
    instead={"layers": "its start_layer option sets the first block of the relevance product"},
    authors=_AUTHORS,
    memory=memory,
)

LAST_SPEC = MethodSpec(
    name="game_last", image=last_layer_maps,
    requires=("probs",),
    options={"chunk": 16, "target": "logit"},
    uses=("score",),  # passes its options on to GAME, which takes no settings but the score
    instead={"layers": "game_last is GAME from the last block; use game with start_layer for other blocks"},
    shown=False,
    authors=_AUTHORS,
    memory=_last_memory,
)
