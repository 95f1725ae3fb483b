"""Attention rollout (Abnar and Zuidema 2020; docs/method.md section 6.2).

Per block from ``start_layer`` to the last: A = mean over heads of the attention, plus the identity,
rows normalised to sum to 1; the rollout is the product A_last ... A_start, and the map is the class
token's row over the patches. Prompt-independent.

Original code: github.com/samiraabnar/attention_flow (the rollout with the residual added, as
github.com/hila-chefer/Transformer-Explainability's ``compute_rollout_attention`` writes it);
``start_layer=0`` (the default) reproduces it. The Grad-ECLIP authors' rollout
(github.com/Cyang-Zhao/Grad-Eclip, ``generate_emap.py``: ``compute_rollout_attention`` over the
attentions that ``mm_interpret`` collects from its ``start_layer=-1``) covers the last block only:
``start_layer=-1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..adapters import CLIPAdapter
from ..budget import Cost, explicit_bytes, image_forward_bytes, map_bytes, tokens
from ._common import per_target, to_grid
from .outputs import MapOutput
from .registry import AuthorsProtocol, MethodSpec
from .scores import own_scores


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, start_layer: int = 0,
               **_: Any) -> MapOutput:
    """Rollout maps (B, K, h, w) from block ``start_layer`` (negative: from the end) to the last.

    The product is accumulated during the forward, A_b @ (A_b-1 ... A_start) block by block, so that
    one block's attention and one (B, N, N) product are held instead of every block's attention.
    Only the class token's row is used, but the forward reaches the blocks in the order opposite to
    that row's (e_0 A_last ... A_start), so the whole product is kept: the same operations in the same
    order as the product of all blocks' attention at the end.
    """
    steps = adapter.image_steps(pixels, adapter.resolve_layers([start_layer], "image")[0])
    tokens, rollout = steps.tokens, None
    for layer in range(steps.first, adapter.num_image_blocks):
        tokens, probs = steps.step(layer, tokens)  # after the last block: the embedding
        attention = probs.float().mean(dim=1)
        del probs
        attention = attention + torch.eye(attention.shape[-1], device=attention.device)
        attention = attention / attention.sum(dim=-1, keepdim=True)
        rollout = attention if rollout is None else attention @ rollout
    maps = to_grid(rollout[:, 0, 1:], steps.grid)
    return MapOutput(maps=per_target(maps, targets.shape[0]), scores=own_scores(adapter, tokens, targets))


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict[str, Any]) -> Cost:
    """One image: its forward without a graph, its blocks computed explicitly (their attention kept), the
    running product and the block's mean attention as it is made (four N x N float32 terms) and its K maps
    (``budget.py``)."""
    return Cost(image=image_forward_bytes(adapter, grid) + explicit_bytes(adapter, grid) + 16 * tokens(grid) ** 2
                + map_bytes(grid, count))


SPEC = MethodSpec(
    name="rollout", image=image_maps,
    requires=("probs",),
    options={"start_layer": 0},
    instead={"layers": "its start_layer option sets the first block of the rollout"},
    # the authors' rollout: the last block only, against the bare class name, on the model's centre crop
    authors=AuthorsProtocol(options={"start_layer": -1}, target="class_name", resolution="model"),
    memory=memory,
)
