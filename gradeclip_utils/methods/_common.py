"""Small helpers shared by the baseline methods: score gradients for many targets at once, and
turning per-image maps into the (B, K, h, w) result every image method returns."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .grad_eclip import batched_vjp, cosine_scores, one_hot_cotangents


def score_gradients(scores: Tensor, inputs: Sequence[Tensor], chunk: int = 64,
                    retain_graph: bool = False) -> list[Tensor]:
    """d scores[b, k] / d input[b] for every target k: one (B, K, *input.shape[1:]) tensor per input.

    The inputs must hold one row per image (the batch dimension first) and images must not interact,
    so that one cotangent per target over all images gives every image's own gradient. The K
    cotangents go through Grad-ECLIP's vectorised ``batched_vjp``, ``chunk`` at a time.
    """
    grads = batched_vjp(scores, inputs, one_hot_cotangents(scores), scores.shape[1], chunk, retain_graph)
    return [grad.transpose(0, 1) for grad in grads]


def per_target(maps: Tensor, count: int) -> Tensor:
    """A target-independent (B, h, w) map repeated for K targets: (B, K, h, w)."""
    return maps.unsqueeze(1).expand(-1, count, *maps.shape[1:]).contiguous()


def to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """(..., P) patch values to (..., h, w) float32, detached."""
    return values.detach().float().reshape(*values.shape[:-1], grid[0], grid[1])


__all__ = ["cosine_scores", "per_target", "score_gradients", "to_grid"]
