"""Small helpers shared by the baseline methods: turning per-image maps into the (B, K, h, w) result
every image method returns."""

from __future__ import annotations

from torch import Tensor


def per_target(maps: Tensor, count: int) -> Tensor:
    """A target-independent (B, h, w) map repeated for K targets: (B, K, h, w)."""
    return maps.unsqueeze(1).expand(-1, count, *maps.shape[1:]).contiguous()


def to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """(..., P) patch values to (..., h, w) float32, detached."""
    return values.detach().float().reshape(*values.shape[:-1], grid[0], grid[1])


__all__ = ["per_target", "to_grid"]
