"""The cascading model-randomisation sanity check (Adebayo et al. 2018; docs/method.md section 7.7).

The image tower's parameters are randomised group by group from the top down (the head, then the
last block, ..., the first block, then the input embedding), cumulatively; after each step the maps
are recomputed for the same images and targets and compared with the original maps by Spearman rank
correlation and SSIM, both on the maps upsampled to the image size and min-max normalised. A map that
does not change while the weights it claims to explain are destroyed is not explaining the model.
Each randomised tensor is redrawn from a Gaussian with that tensor's own mean and standard deviation
(seeded), so scales stay as trained. A constant map has no ranking: its Spearman correlation with a
map that has one is 0, with another constant map 1 (nothing changed).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..maps import normalise_maps, resize_maps

__all__ = ["SanityResult", "cascading_randomisation", "spearman", "ssim"]

MapFunction = Callable[[Any, Tensor, Tensor], Tensor]


def _ranks(values: Tensor) -> Tensor:
    """Average ranks along the last axis (ties share their mean rank), float64."""
    order = values.argsort(dim=-1, stable=True)
    sorted_values = values.gather(-1, order)
    position = torch.arange(values.shape[-1], dtype=torch.float64).expand(values.shape).contiguous()
    ranks = torch.empty_like(position)
    # mean position over each run of equal values
    new_run = torch.ones_like(sorted_values, dtype=torch.bool)
    new_run[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    run_id = new_run.long().cumsum(-1) - 1
    sums = torch.zeros_like(position).scatter_add_(-1, run_id, position)
    counts = torch.zeros_like(position).scatter_add_(-1, run_id, torch.ones_like(position))
    mean_position = sums.gather(-1, run_id) / counts.gather(-1, run_id)
    ranks.scatter_(-1, order, mean_position)
    return ranks


def spearman(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """Spearman rank correlation of maps (..., H, W) pairwise over the leading axes (a constant map: 0
    against a non-constant one, 1 against another constant one)."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64).flatten(-2)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64).flatten(-2)
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    denominator = (rx.norm(dim=-1) * ry.norm(dim=-1))
    rho = torch.where(denominator > 0, (rx * ry).sum(-1) / torch.where(denominator > 0, denominator, 1.0),
                      torch.zeros_like(denominator))
    both_constant = (rx.norm(dim=-1) == 0) & (ry.norm(dim=-1) == 0)
    rho = torch.where(both_constant, torch.ones_like(rho), rho)
    return rho.numpy()


def ssim(a: Tensor | np.ndarray, b: Tensor | np.ndarray, window: int = 7, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM of maps (..., H, W) pairwise, as scikit-image computes it by default: a uniform
    ``window`` x ``window`` filter, sample covariances, K1 = 0.01, K2 = 0.03, averaged over the
    positions where the window fits inside the map."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    lead = x.shape[:-2]
    if min(x.shape[-2:]) < window:
        raise ValueError(f"maps of size {tuple(x.shape[-2:])} are smaller than the SSIM window {window}")
    x, y = x.reshape(-1, 1, *x.shape[-2:]), y.reshape(-1, 1, *y.shape[-2:])

    def local_mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, window, stride=1)

    n = window * window
    cov_norm = n / (n - 1)
    ux, uy = local_mean(x), local_mean(y)
    vx = cov_norm * (local_mean(x * x) - ux * ux)
    vy = cov_norm * (local_mean(y * y) - uy * uy)
    vxy = cov_norm * (local_mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(-1, -2, -3)).reshape(lead).numpy()


def _normalised(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return normalise_maps(resize_maps(maps, size, dtype=torch.float64))


@dataclasses.dataclass
class SanityResult:
    """Per randomisation stage (0: the original model): its name and (B, K) Spearman and SSIM arrays."""

    stages: list[str]
    spearman: list[np.ndarray]
    ssim: list[np.ndarray]

    def summary(self) -> list[dict[str, Any]]:
        """Mean Spearman and SSIM per stage (rows: depth, stage, spearman, ssim)."""
        return [{"depth": d, "stage": s, "spearman": float(np.mean(r)), "ssim": float(np.mean(m))}
                for d, (s, r, m) in enumerate(zip(self.stages, self.spearman, self.ssim))]


def _randomise(parameters: list[torch.nn.Parameter], generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in parameters:
            values = p.detach().float()
            mean = float(values.mean())
            std = float(values.std()) if values.numel() > 1 else 0.0
            draw = torch.randn(p.shape, generator=generator) * std + mean
            p.copy_(draw.to(device=p.device, dtype=p.dtype))


def _method_maps(method: str | MapFunction, options: dict[str, Any]) -> MapFunction:
    if callable(method):
        return method

    def run(model, pixels: Tensor, targets: Tensor) -> Tensor:
        from ..explain import explain_image

        return explain_image(model, pixels, targets, method=method, progress=False, **options).maps

    return run


def randomised_copy(model, stages: int = 1, seed: int = 0):
    """A copy of a LoadedModel whose image tower has its top ``stages`` parameter groups (head, last
    block, ...) redrawn as the cascading check draws them (same mean and spread, new values); the
    model itself is left as it is. Named "<name> (top N randomised)"."""
    randomised = dataclasses.replace(model, model=copy.deepcopy(model.model),
                                     name=f"{model.name} (top {stages} randomised)")
    generator = torch.Generator().manual_seed(seed)
    for _, parameters in randomised.adapter.image_parameter_groups()[:stages]:
        _randomise(parameters, generator)
    return randomised


def cascading_randomisation(model, pixels: Tensor, targets: Tensor, method: str | MapFunction = "grad_eclip", *,
                            seed: int = 0, max_stages: int | None = None, **options: Any) -> SanityResult:
    """Run the cascading randomisation check for B images (normalised pixels) against K unit targets.

    ``model`` is a LoadedModel (never modified: a copy is randomised); ``method`` a registered image
    method name (``options`` are passed to it) or a function (model, pixels, targets) -> (B, K, h, w).
    ``max_stages`` stops after that many randomisation steps.
    """
    run = _method_maps(method, options)
    size = tuple(pixels.shape[-2:])
    original = _normalised(run(model, pixels, targets), size)
    randomised = dataclasses.replace(model, model=copy.deepcopy(model.model))
    groups = randomised.adapter.image_parameter_groups()
    if max_stages is not None:
        groups = groups[:max_stages]
    generator = torch.Generator().manual_seed(seed)
    stages, rhos, ssims = ["original"], [spearman(original, original)], [ssim(original, original)]
    for name, parameters in groups:
        _randomise(parameters, generator)
        maps = _normalised(run(randomised, pixels, targets), size)
        stages.append(name)
        rhos.append(spearman(original, maps))
        ssims.append(ssim(original, maps))
    return SanityResult(stages=stages, spearman=rhos, ssim=ssims)
