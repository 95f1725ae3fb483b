"""Localisation metrics of heat maps against ground-truth masks (docs/method.md section 7.2).

All functions take ``maps`` of shape ``(..., h, w)`` and boolean ``masks`` of shape ``(..., H, W)``
(numpy arrays or torch tensors; the leading dimensions broadcast against each other) and return a
numpy array of the broadcast leading shape (0-d for a single map). A map whose grid differs from the
mask's (e.g. a raw 8x8 patch-grid map against a 64x64 mask) is first upsampled bilinearly
(``align_corners=False``) to the mask's size. Maps are never min-max normalised here: the metrics are
invariant to positive scaling, and the energy pointing game uses the raw non-negative part.

- :func:`pointing_game`: hit when the map's maximum lies inside the mask, or within ``tolerance``
  pixels (Euclidean, on the mask's grid) of a mask pixel. When several pixels share the maximum, a hit
  means any of them qualifies. A constant or non-finite map is a miss (it points nowhere).
- :func:`energy_pointing_game`: share of the non-negative map's mass inside the mask,
  ``sum(relu(map) * mask) / sum(relu(map))``; 0 for a map without positive mass.
- :func:`mask_iou`: IoU between the mask and the map thresholded at its mean (``map > mean(map)``).

An empty mask has no target: the pointing game is a miss and the energy and IoU are NaN.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..maps import ArrayLike, as_tensor, resize_maps

__all__ = ["pointing_game", "energy_pointing_game", "mask_iou", "localisation_scores", "dilate_masks"]


def dilate_masks(masks: ArrayLike, radius: float) -> torch.Tensor:
    """Grow boolean masks ``(..., H, W)`` by a disk of ``radius`` pixels (Euclidean)."""
    m = as_tensor(masks, torch.bool)
    if radius <= 0:
        return m
    r = int(np.floor(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = ((yy ** 2 + xx ** 2) <= radius ** 2 + 1e-9).to(torch.float32)
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:]).to(torch.float32)
    out = F.conv2d(flat, disk[None, None], padding=r) > 0.5
    return out.reshape(*lead, *m.shape[-2:])


def _prepare(maps: ArrayLike, masks: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    mk = as_tensor(masks, torch.bool)
    if mk.ndim < 2:
        raise ValueError(f"masks need at least 2 dimensions, got shape {tuple(mk.shape)}")
    mp = resize_maps(maps, tuple(mk.shape[-2:]), dtype=torch.float64)
    lead = torch.broadcast_shapes(mp.shape[:-2], mk.shape[:-2])
    return mp.expand(*lead, *mp.shape[-2:]), mk.expand(*lead, *mk.shape[-2:])


def pointing_game(maps: ArrayLike, masks: ArrayLike, tolerance: float = 0.0) -> np.ndarray:
    """Boolean hits: the map's maximum lies in the mask grown by ``tolerance`` pixels."""
    mp, mk = _prepare(maps, masks)
    target = dilate_masks(mk, tolerance) if tolerance > 0 else mk
    finite = torch.isfinite(mp).all(-1).all(-1)
    safe = torch.where(torch.isfinite(mp), mp, torch.zeros_like(mp))
    mx = safe.amax(dim=(-2, -1), keepdim=True)
    mn = safe.amin(dim=(-2, -1), keepdim=True)
    at_max = safe == mx
    hit = (at_max & target).any(-1).any(-1)
    flat = (mx == mn).squeeze(-1).squeeze(-1)
    nonempty = mk.any(-1).any(-1)
    return (hit & finite & ~flat & nonempty).numpy()


def energy_pointing_game(maps: ArrayLike, masks: ArrayLike) -> np.ndarray:
    """Share of the map's non-negative mass inside the mask, in [0, 1]."""
    mp, mk = _prepare(maps, masks)
    pos = mp.clamp_min(0)
    total = pos.sum(dim=(-2, -1))
    inside = (pos * mk).sum(dim=(-2, -1))
    out = torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                      torch.zeros_like(total))
    out = torch.where(mk.any(-1).any(-1), out, torch.full_like(out, float("nan")))
    return out.numpy()


def mask_iou(maps: ArrayLike, masks: ArrayLike) -> np.ndarray:
    """IoU of ``map > mean(map)`` with the mask."""
    mp, mk = _prepare(maps, masks)
    binary = mp > mp.mean(dim=(-2, -1), keepdim=True)
    inter = (binary & mk).sum(dim=(-2, -1)).to(torch.float64)
    union = (binary | mk).sum(dim=(-2, -1)).to(torch.float64)
    iou = inter / union.clamp_min(1)
    iou = torch.where(mk.any(-1).any(-1), iou, torch.full_like(iou, float("nan")))
    return iou.numpy()


def localisation_scores(maps: ArrayLike, masks: ArrayLike, tolerance: float = 0.0) -> dict[str, np.ndarray]:
    """All three metrics plus the mask's area share (the energy a uniform map would score); the pointing
    game both within ``tolerance`` pixels ("pointing") and strict ("pointing_strict")."""
    mk = as_tensor(masks, torch.bool)
    share = mk.to(torch.float64).mean(dim=(-2, -1))
    pg = pointing_game(maps, masks, tolerance)
    return {
        "pointing": pg,
        "pointing_strict": pg if tolerance == 0 else pointing_game(maps, masks, 0.0),
        "energy": energy_pointing_game(maps, masks),
        "iou": mask_iou(maps, masks),
        "area_share": np.broadcast_to(share.numpy(), pg.shape).copy(),
    }
