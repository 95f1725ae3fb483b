"""Small helpers shared by the baseline methods: score gradients for many targets at once, and
turning per-image maps into the (B, K, h, w) result every image method returns."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .grad_eclip import cosine_scores


def score_gradients(scores: Tensor, inputs: Sequence[Tensor], chunk: int = 64,
                    retain_graph: bool = False) -> list[Tensor]:
    """d scores[b, k] / d input[b] for every target k: one (B, K, *input.shape[1:]) tensor per input.

    The inputs must hold one row per image (the batch dimension first) and images must not interact,
    so that one cotangent per target over all images gives every image's own gradient. The K
    cotangents are pushed through the graph in batches of ``chunk`` (one backward per chunk).
    """
    count = scores.shape[1]
    pieces: list[list[Tensor]] = [[] for _ in inputs]
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        cot = torch.zeros(stop - start, *scores.shape, dtype=scores.dtype, device=scores.device)
        cot[torch.arange(stop - start), :, torch.arange(start, stop)] = 1.0
        grads = torch.autograd.grad(scores, list(inputs), grad_outputs=cot, is_grads_batched=True,
                                    retain_graph=retain_graph or stop < count, allow_unused=True)
        for slot, grad, inp in zip(pieces, grads, inputs):
            grad = torch.zeros((stop - start, *inp.shape), dtype=inp.dtype, device=inp.device) if grad is None else grad
            slot.append(grad.transpose(0, 1))
    return [torch.cat(slot, dim=1) for slot in pieces]


def per_target(maps: Tensor, count: int) -> Tensor:
    """A target-independent (B, h, w) map repeated for K targets: (B, K, h, w)."""
    return maps.unsqueeze(1).expand(-1, count, *maps.shape[1:]).contiguous()


def to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """(..., P) patch values to (..., h, w) float32, detached."""
    return values.detach().float().reshape(*values.shape[:-1], grid[0], grid[1])


__all__ = ["cosine_scores", "per_target", "score_gradients", "to_grid"]
