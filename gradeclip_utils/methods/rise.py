"""RISE, randomised input sampling (Petsiuk et al. 2018; docs/method.md section 6.7).

N random binary masks on a coarse ``cells`` x ``cells`` grid (each cell kept with probability p),
upsampled bilinearly to (cells + 1) x the cell size and cropped at a random shift, so that their edges
fall anywhere; the saliency is sum_n S(image * mask_n) mask_n / (N p), with S the image-text cosine
of the masked image, or another explained score of it (``score``, ``scores.py``: the logit, the
probability among the prompts, as RISE's authors explain class probabilities, or a contrast of two
prompts) (masked pixels become 0 in normalised space, the data set's mean colour, as the
authors' code does). The masks are drawn from ``seed`` (the same masks for every image) and the
masked images run through the model in passes of ``mask_batch`` (each pass's scores summed together),
each pass in forwards of ``mask_chunk`` masks per image (a memory budget's chunk: the same sums);
all K targets share the passes. Maps have the image's pixel resolution.

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
from ..budget import Cost, image_forward_bytes, map_bytes, picture_bytes
from .outputs import MapOutput
from .registry import MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, explained_score

#: masks upsampled at once while they are drawn (each mask's values do not depend on it)
_DRAWN_AT_ONCE = 64


def generate_masks(count: int, size: tuple[int, int], cells: int = 8, p: float = 0.5, seed: int = 0) -> Tensor:
    """(count, H, W) float32 RISE masks in [0, 1], a pure function of the arguments (drawn on the CPU)."""
    if count < 1 or cells < 1 or not 0 < p <= 1:
        raise ValueError(f"need count >= 1, cells >= 1 and 0 < p <= 1; got {count}, {cells}, {p}")
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.rand(count, 1, cells, cells, generator=generator) < p).float()
    dy = torch.randint(0, cell_h, (count,), generator=generator)
    dx = torch.randint(0, cell_w, (count,), generator=generator)
    masks = torch.empty(count, height, width)
    # upsampled a few at a time into the result: the upsampled masks, larger than the crops, are never all held
    for start in range(0, count, _DRAWN_AT_ONCE):
        up = F.interpolate(grid[start:start + _DRAWN_AT_ONCE], size=((cells + 1) * cell_h, (cells + 1) * cell_w),
                           mode="bilinear", align_corners=False)
        for n in range(start, start + up.shape[0]):
            masks[n] = up[n - start, 0, int(dy[n]):int(dy[n]) + height, int(dx[n]):int(dx[n]) + width]
    return masks.clamp_(0.0, 1.0)


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, masks: int = 2000, cells: int = 8,
               p: float = 0.5, seed: int = 0, mask_batch: int = 256, centre: bool = False,
               mask_chunk: int | None = None, score: str | ExplainedScore = DEFAULT_SCORE, **_: Any) -> MapOutput:
    """RISE saliency (B, K, H, W) of the explained ``score`` from ``masks`` masked copies of each image.

    A pass takes ``mask_batch // B`` masks (at least one) and sums their scores into the map; it runs
    through the model in forwards of ``mask_chunk`` masks per image (None: the whole pass), which only
    cuts the forward, not the sums.

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
    per_forward = per_pass if mask_chunk is None else max(1, min(int(mask_chunk), per_pass))
    for start in range(0, masks, per_pass):
        chunk = all_masks[start:start + per_pass]  # (n, H, W)
        parts = []
        for part in chunk.split(per_forward):
            masked = (pixels.unsqueeze(1) * part[None, :, None]).flatten(0, 1)  # (B n, 3, H, W)
            # the score of each masked picture among every target row: a forward's masks are its rows
            values = score.image_scores(adapter.encode_image(masked), targets)
            parts.append(values.reshape(batch, part.shape[0], -1))
            del masked
        scores = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        saliency += torch.einsum("bnk,nhw->bkhw", scores, chunk.float())
        score_sum += scores.sum(dim=1)
    if centre:
        saliency -= (score_sum / masks)[..., None, None] * all_masks.sum(dim=0)
    saliency /= masks * p
    return MapOutput(maps=saliency.float(),
                     scores=score.image_scores(adapter.encode_image(pixels), targets))


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict[str, Any]) -> Cost:
    """Fixed: the masks at the picture's size (float32). One image: its picture, its K saliency maps and a
    pass's sum (float32, the picture's size). Each mask of a forward, per image: the masked picture (and
    its product) and its forward without a graph; a pass holds ``mask_batch`` masked pictures over the
    call's images (``budget.py``)."""
    pixels = picture_bytes(adapter, grid)
    size = tuple(side * patch for side, patch in zip(grid, adapter.patch_size))
    limit = min(options["mask_chunk"] or options["mask_batch"], options["mask_batch"], options["masks"])
    return Cost(image=pixels + 2 * map_bytes(size, count), unit=image_forward_bytes(adapter, grid) + 2 * pixels,
                option="mask_chunk", limit=limit, unit_name="mask per forward",
                fixed=map_bytes(size, options["masks"]), fixed_what=f"RISE's {options['masks']} masks",
                pass_units=options["mask_batch"])


SPEC = MethodSpec(
    name="rise", image=image_maps,
    options={"masks": 2000, "cells": 8, "p": 0.5, "seed": 0, "mask_batch": 256, "centre": False, "mask_chunk": None},
    probe={"masks": 2},
    slow=True,
    run_options={"masks": "rise_masks", "seed": "seed", "centre": "rise_centre"},
    shown=False,
    interactive_options={"masks": 500},  # interactive speed
    memory=memory,
)
