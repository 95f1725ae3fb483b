"""Gradients of many scores at once: vector-Jacobian products for a batch of cotangents, vectorised
with ``torch.func.vmap`` (Grad-ECLIP's channel weights and the gradient baselines' score gradients)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def batched_vjp(outputs: Tensor, inputs: Sequence[Tensor], cotangents: Callable[[int, int], Tensor], count: int,
                chunk: int, retain_graph: bool = False) -> list[Tensor]:
    """Vector-Jacobian products of ``outputs`` for ``count`` cotangents, ``chunk`` at a time.

    ``cotangents(start, stop)`` builds cotangents ``start:stop`` as a (stop - start, *outputs.shape)
    tensor, so that no more than one chunk of them is ever held. Returns one (count, *input.shape)
    tensor per input (zeros for an input that ``outputs`` does not depend on). Each chunk is a single
    backward pass vectorised with ``torch.func.vmap``, whose batching rules cover the backward of
    layer norm and GELU (the older ``is_grads_batched`` loops over the cotangents one by one there).
    The graph is kept between chunks and freed after the last one (unless ``retain_graph``).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    inputs = list(inputs)
    pieces: list[list[Tensor]] = [[] for _ in inputs]
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        retain = retain_graph or stop < count

        def pull(cotangent: Tensor, retain: bool = retain) -> tuple[Tensor, ...]:
            return torch.autograd.grad(outputs, inputs, grad_outputs=cotangent, retain_graph=retain,
                                       materialize_grads=True)

        for slot, grad in zip(pieces, torch.func.vmap(pull)(cotangents(start, stop))):
            slot.append(grad)
    return [torch.cat(slot, dim=0) if len(slot) > 1 else slot[0] for slot in pieces]


def one_hot_cotangents(scores: Tensor) -> Callable[[int, int], Tensor]:
    """Cotangents ``start:stop`` selecting score column k for every row: (stop - start, N, K)."""

    def build(start: int, stop: int) -> Tensor:
        cot = torch.zeros(stop - start, *scores.shape, dtype=scores.dtype, device=scores.device)
        cot[torch.arange(stop - start), :, torch.arange(start, stop)] = 1.0
        return cot

    return build


def score_gradients(scores: Tensor, inputs: Sequence[Tensor], chunk: int = 64,
                    retain_graph: bool = False) -> list[Tensor]:
    """d scores[b, k] / d input[b] for every target k: one (B, K, *input.shape[1:]) tensor per input.

    The inputs must hold one row per image (the batch dimension first) and images must not interact,
    so that one cotangent per target over all images gives every image's own gradient. The K
    cotangents go through the vectorised ``batched_vjp``, ``chunk`` at a time.
    """
    grads = batched_vjp(scores, inputs, one_hot_cotangents(scores), scores.shape[1], chunk, retain_graph)
    return [grad.transpose(0, 1) for grad in grads]
