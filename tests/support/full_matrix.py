"""GAME and attention rollout as full N x N matrices over a trace that holds every block's attention.

This is how the package computed them before they were folded one block at a time (the methods now
hold one block's attention and gradient at a time): one forward with every block's attention
probabilities captured (``keep_probs``), the rollout product of all blocks at the end, and for GAME
the gradients of every block's attention for a chunk of targets from one backward pass, then
R <- R + cam R from the first block up, with R (B, k, N, N). Kept here, as written then, as the
reference the blockwise code must reproduce (docs/method.md sections 6.2 and 6.4, in the same operations).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS
from gradeclip_utils.methods.grad_eclip import batched_vjp, cosine_scores, one_hot_cotangents


def rollout(adapter, pixels: Tensor, start_layer: int = 0) -> tuple[Tensor, Tensor]:
    """Rollout maps (B, h, w) and the embedding (B, D): A_last ... A_start, class token's row."""
    with torch.no_grad():
        blocks = adapter.resolve_layers([start_layer], "image")
        blocks = list(range(blocks[0], adapter.num_image_blocks))
        trace = adapter.trace_image(pixels, blocks, keep_probs=True)
        product = None
        for layer in blocks:
            attention = trace.blocks[layer].probs.float().mean(dim=1)
            attention = attention + torch.eye(attention.shape[-1], device=attention.device)
            attention = attention / attention.sum(dim=-1, keepdim=True)
            product = attention if product is None else attention @ product
        grid = trace.grid
        return product[:, 0, 1:].reshape(-1, grid[0], grid[1]), trace.embedding


def _relevance_rows(trace, blocks: list[int], scores: Tensor, chunk: int) -> Tensor:
    """Rows of R at the pooled token (B, K, N) for every target, chunk by chunk."""
    probs = [trace.blocks[layer].probs for layer in blocks]
    count = scores.shape[1]
    rows = torch.arange(scores.shape[0], device=scores.device)
    pieces = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        part = scores[:, start:stop]
        grads = [g.transpose(0, 1) for g in batched_vjp(part, probs, one_hot_cotangents(part), stop - start,
                                                          stop - start, retain_graph=stop < count)]
        size = probs[0].shape[-1]
        relevance = torch.eye(size, device=scores.device).expand(scores.shape[0], stop - start, size, size)
        for attention, grad in zip(probs, grads):
            cam = (grad.float() * attention.detach().float().unsqueeze(1)).clamp(min=0).mean(dim=2)
            relevance = relevance + cam @ relevance
        pieces.append(relevance[rows, :, trace.token_index])  # (B, k, N)
    return torch.cat(pieces, dim=1)


def game(adapter, inputs: Tensor, targets: Tensor, *, tower: str = "image", start_layer: int = 0, chunk: int = 16,
         target: str = "logit") -> tuple[Tensor, Tensor, tuple[int, int] | None]:
    """GAME rows of the traced batch: (N, M, positions) for N pixels (or token sequences) and M targets,
    the cosines (N, M) and the patch grid of images. Image rows keep the class token's position 0."""
    first = adapter.resolve_layers([start_layer], tower)[0]
    blocks = list(range(first, adapter.num_image_blocks if tower == "image" else adapter.num_text_blocks))
    trace = (adapter.trace_image if tower == "image" else adapter.trace_text)(inputs, blocks, keep_probs=True)
    scores = cosine_scores(trace.embedding, targets)
    factor = adapter.logit_scale if target == "logit" else 1.0
    rows = _relevance_rows(trace, blocks, factor * scores, chunk)
    return rows.detach(), scores.detach(), trace.grid


def game_maps(adapter, pixels: Tensor, targets: Tensor, **options) -> tuple[Tensor, Tensor]:
    """GAME image maps (B, K, h, w) and the cosines (B, K)."""
    rows, scores, grid = game(adapter, pixels, targets, tower="image", **options)
    return rows[..., 1:].float().reshape(*rows.shape[:2], *grid), scores


def per_map_relative(got: Tensor, want: Tensor, map_dims: int = 2) -> float:
    """The largest difference of any map relative to that map's own largest magnitude; a map is the
    last ``map_dims`` dimensions (2: an image map, 1: a row over token positions)."""
    got, want = got.detach().float(), want.detach().float()
    assert got.shape == want.shape, (got.shape, want.shape)
    dims = tuple(range(-map_dims, 0))
    scale = want.abs().amax(dim=dims)
    assert bool((scale > 0).all()), "a reference map is all zero"
    return float(((got - want).abs().amax(dim=dims) / scale).max())


# ------------------------------------------------------------------------ checks shared by the families
#: the fraction of each map's largest magnitude to which the blockwise code reproduces the full matrices
#: (what is left is float32 rounding: the row is a product taken in another association)
TOL = 1e-6
#: scores are the same cosines either way
SCORE_TOL = 1e-5
ROLLOUT_STARTS = (0, 1, -1)
#: GAME's options: every chunk size is given to both sides (a backward batched over another number of
#: cotangents rounds differently)
GAME_OPTIONS = ({"chunk": 16}, {"target": "cosine", "chunk": 2}, {"start_layer": 1, "chunk": 1},
                {"start_layer": -1, "chunk": 2})
ONE_BLOCK_OPTIONS = ({"chunk": 16}, {"target": "cosine", "chunk": 2})


def _relative(got: Tensor, want: Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-30)


def check_image_methods(adapter, pixels: Tensor, targets: Tensor, rollout_starts=ROLLOUT_STARTS,
                        game_options=GAME_OPTIONS) -> None:
    """rollout, game and game_last of ``adapter`` on ``pixels`` against the full matrices: each map to TOL
    of its maximum, the scores to SCORE_TOL."""
    for start in rollout_starts:
        got = IMAGE_METHODS["rollout"](adapter, pixels, targets, start_layer=start)
        want, embedding = rollout(adapter, pixels, start)
        assert got.maps.shape == (pixels.shape[0], targets.shape[0], *want.shape[-2:])
        assert per_map_relative(got.maps, want[:, None].expand_as(got.maps)) < TOL, start
        assert _relative(got.scores, cosine_scores(embedding, targets)) < SCORE_TOL
    for options in game_options:
        got = IMAGE_METHODS["game"](adapter, pixels, targets, **options)
        want, scores = game_maps(adapter, pixels, targets, **options)
        assert per_map_relative(got.maps, want) < TOL, options
        assert _relative(got.scores, scores) < SCORE_TOL
    got = IMAGE_METHODS["game_last"](adapter, pixels, targets, chunk=2)
    want, _ = game_maps(adapter, pixels, targets, start_layer=-1, chunk=2)
    assert per_map_relative(got.maps, want) < TOL


def check_text_game(adapter, tokens: Tensor, images: Tensor, game_options=GAME_OPTIONS) -> None:
    """Text GAME (each text's EOS row over all positions, against each image) against the full matrices."""
    for options in game_options:
        got = TEXT_METHODS["game"](adapter, tokens, images, **options)
        rows, scores, _ = game(adapter, tokens, images, tower="text", **options)
        assert per_map_relative(got.relevance, rows.permute(1, 0, 2), map_dims=1) < TOL, options
        assert _relative(got.scores, scores.T) < SCORE_TOL
