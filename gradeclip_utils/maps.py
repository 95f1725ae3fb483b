"""Map geometry, one implementation each: resizing maps between grids (bilinear) and min-max normalisation.

Heat maps for display are resized in float32, the metrics resize in float64: ``resize_maps`` takes the
dtype, so that each caller keeps its own.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = Union[np.ndarray, Tensor]


def as_tensor(x: ArrayLike, dtype: torch.dtype) -> Tensor:
    """A tensor (detached) or numpy array as a CPU tensor of ``dtype``."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x)).to(dtype)


def resize_maps(maps: ArrayLike, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Bilinearly resize maps ``(..., h, w)`` (a tensor or a numpy array) to ``(..., *size)``, as ``dtype``
    on the CPU (``align_corners=False``). Maps already of that size are converted, not interpolated."""
    m = as_tensor(maps, dtype)
    if m.ndim < 2:
        raise ValueError(f"maps need at least 2 dimensions, got shape {tuple(m.shape)}")
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])
    up = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return up.reshape(*lead, *size)


def minmax(values: Tensor, dim: int = -1) -> Tensor:
    """Min-max normalise along ``dim`` to [0, 1]; a constant slice gives zeros, never NaN."""
    low = values.amin(dim=dim, keepdim=True)
    span = values.amax(dim=dim, keepdim=True) - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(values))


def normalise_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each (h, w) map to [0, 1]; an all-constant map gives zeros, never NaN."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    return minmax(flat, dim=-1).reshape(maps.shape)
