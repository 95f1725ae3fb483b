"""RISE, randomised input sampling (Petsiuk et al. 2018; docs/method.md section 6.7).

N random binary masks on a coarse ``cells`` x ``cells`` grid (each cell kept with probability p),
upsampled bilinearly to (cells + 1) x the cell size and cropped at a random shift, so that their edges
fall anywhere; the saliency is sum_n S(image * mask_n) mask_n / (N p), with S the image-text cosine
of the masked image, or another explained score of it (``score``, ``scores.py``: the logit, the
probability among the prompts, as RISE's authors explain class probabilities, or a contrast of two
prompts) (masked pixels become 0 in normalised space, the data set's mean colour, as the
authors' code does). The masks are drawn from ``seed`` (the same masks for every image) and the
masked images run through the model in batches of ``mask_batch``; all K targets share the passes.
Maps have the image's pixel resolution.

Original code: github.com/eclique/RISE (``explanations.py``: ``RISE.generate_masks`` and ``forward``);
the defaults (``centre=False``, 8 x 8 cells, p = 0.5) reproduce it with the image-text cosine as the
score (the original explains class probabilities). ``centre=True`` is this project's variance
reduction (see ``image_maps``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from .outputs import MapOutput
from .registry import MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, explained_score


def generate_masks(count: int, size: tuple[int, int], cells: int = 8, p: float = 0.5, seed: int = 0) -> Tensor:
    """(count, H, W) float32 RISE masks in [0, 1], a pure function of the arguments (drawn on the CPU)."""
    if count < 1 or cells < 1 or not 0 < p <= 1:
        raise ValueError(f"need count >= 1, cells >= 1 and 0 < p <= 1; got {count}, {cells}, {p}")
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(count, 1, cells, cells, generator=generator) < p).float()
    up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                       align_corners=False)
    dy = torch.randint(0, cell_h, (count,), generator=generator)
    dx = torch.randint(0, cell_w, (count,), generator=generator)
    return torch.stack([up[n, 0, int(dy[n]):int(dy[n]) + height, int(dx[n]):int(dx[n]) + width]
                        for n in range(count)]).clamp(0.0, 1.0)


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, masks: int = 2000, cells: int = 8,
               p: float = 0.5, seed: int = 0, mask_batch: int = 256, centre: bool = False,
               score: str | ExplainedScore = DEFAULT_SCORE, **_: Any) -> MapOutput:
    """RISE saliency (B, K, H, W) of the explained ``score`` from ``masks`` masked copies of each image.

    ``centre=True`` subtracts the mean score over the masks before weighting them:
    sum_n (S_n - mean S) mask_n / (N p). In expectation that only removes a constant (the mean score),
    but it removes the noise of the masks' uneven coverage, which dominates the plain sum when the
    scores vary little between masks (cosines do, far less than the class probabilities RISE was made
    for) and N is small.
    """
    score = explained_score(score, adapter)
    device = pixels.device
    batch, count = pixels.shape[0], score.count(targets.shape[0])
    all_masks = generate_masks(masks, tuple(pixels.shape[-2:]), cells, p, seed).to(device)
    saliency = torch.zeros(batch, count, *pixels.shape[-2:], device=device)
    score_sum = torch.zeros(batch, count, device=device)
    per_pass = max(1, mask_batch // batch)
    for start in range(0, masks, per_pass):
        chunk = all_masks[start:start + per_pass]  # (n, H, W)
        masked = (pixels.unsqueeze(1) * chunk[None, :, None]).flatten(0, 1)  # (B n, 3, H, W)
        scores = score.image_scores(adapter.encode_image(masked), targets).reshape(batch, chunk.shape[0], -1)
        saliency += torch.einsum("bnk,nhw->bkhw", scores, chunk.float())
        score_sum += scores.sum(dim=1)
    if centre:
        saliency -= (score_sum / masks)[..., None, None] * all_masks.sum(dim=0)
    saliency /= masks * p
    return MapOutput(maps=saliency.float(),
                     scores=score.image_scores(adapter.encode_image(pixels), targets))


SPEC = MethodSpec(
    name="rise", image=image_maps,
    options={"masks": 2000, "cells": 8, "p": 0.5, "seed": 0, "mask_batch": 256, "centre": False},
    probe={"masks": 2},
    slow=True,
    run_options={"masks": "rise_masks", "seed": "seed", "centre": "rise_centre"},
    shown=False,
    interactive_options={"masks": 500},  # interactive speed
)
