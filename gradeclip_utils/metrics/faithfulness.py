"""Deletion and insertion curves and their AUC (method.md section 6), batched on the model's device.

Pixels are ordered by the heat map (bilinearly upsampled to the image, most important first; ties in
raster order). In steps of ``step`` (0.5%) of the pixels up to ``max_fraction`` (50%), deletion
replaces pixels with uniform random RGB values (one seeded random picture per image, so the pixels
deleted at each step keep their random values), starting from the image; insertion copies pixels
into an all-black picture. Every ``score_every`` steps (every 5%: 11 points) the classifier scores
the picture: top-1 accuracy (is the target the highest-scoring class), the target's cosine score and
its probability (softmax of ``logit_scale`` x cosine over the classes). Step n changes round(n *
step * H * W) pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .localisation import resize_maps

__all__ = ["AUC_DEFINITION", "CURVE_MEASURES", "PerturbationCurves", "area_under_curve", "perturbation_curves",
           "pixel_ranks"]

AUC_DEFINITION = ("AUC = trapezoidal area under the curve over the changed-pixel fraction (0 to 50%, scored "
                  "every 5%), divided by the x-range (0.5): the curve's mean height. Deletion (pixels replaced "
                  "by random RGB, most important first): lower is better. Insertion (pixels copied into a black "
                  "image, most important first): higher is better.")
CURVE_MEASURES: tuple[str, ...] = ("accuracy", "score", "probability")


def area_under_curve(fractions: Sequence[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoidal area under ``values`` (..., T) over ``fractions`` (T,), divided by the x-range."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < 2 or y.shape[-1] != x.shape[0]:
        raise ValueError(f"need T >= 2 fractions matching the last axis of values; got {x.shape} and {y.shape}")
    span = x[-1] - x[0]
    if span <= 0:
        raise ValueError("fractions must increase")
    area = ((y[..., 1:] + y[..., :-1]) / 2 * np.diff(x)).sum(axis=-1)
    return area / span


def pixel_ranks(maps: Tensor | np.ndarray, size: tuple[int, int]) -> Tensor:
    """Rank of every pixel (B, H, W): 0 for the most important; maps (B, h, w) are upsampled bilinearly.

    Ties are broken in raster order (a constant map removes the image from the top-left on).
    """
    up = resize_maps(maps, size)
    if up.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got {tuple(up.shape)}")
    flat = up.reshape(up.shape[0], -1)
    if not torch.isfinite(flat).all():
        raise ValueError("maps hold NaN or infinite values")
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks.reshape(up.shape[0], *size)


@dataclass
class PerturbationCurves:
    """Curves of B images at T fractions: ``deletion[m]`` and ``insertion[m]`` are (B, T) arrays for each
    measure m in ``CURVE_MEASURES``."""

    fractions: np.ndarray
    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]

    def auc(self, kind: str, measure: str = "score") -> np.ndarray:
        """Per-image AUC (B,) of one curve (see ``AUC_DEFINITION``)."""
        curves = {"deletion": self.deletion, "insertion": self.insertion}[kind]
        return area_under_curve(self.fractions, curves[measure])


@torch.no_grad()
def perturbation_curves(adapter, pixels: Tensor, maps: Tensor | np.ndarray, classifier: Tensor, labels: Sequence[int],
                        *, mean: Sequence[float], std: Sequence[float], step: float = 0.005,
                        max_fraction: float = 0.5, score_every: int = 10, seed: int | Sequence[int] = 0,
                        logit_scale: float = 100.0, batch_size: int = 128) -> PerturbationCurves:
    """Deletion and insertion curves for B images (normalised pixels (B, 3, H, W)), their maps (B, h, w)
    for the target class ``labels[b]`` of a zero-shot ``classifier`` (C, D) of unit class embeddings.

    ``mean``/``std`` are the model's normalisation (to make random RGB and black pictures); every
    modified picture goes through ``adapter.encode_image`` in batches of ``batch_size``. ``seed`` draws
    the random pictures: one seed for the batch, or one per image (so that an image gets the same
    random picture whatever batch it is in, e.g. for every method it is explained by).
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    batch, _, height, width = pixels.shape
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if labels_t.shape != (batch,) or labels_t.min() < 0 or labels_t.max() >= classifier.shape[0]:
        raise ValueError(f"need one label in [0, {classifier.shape[0]}) per image")
    steps = int(round(max_fraction / step))
    scored = list(range(0, steps + 1, score_every))
    if scored[-1] != steps:
        scored.append(steps)
    fractions = np.array([n * step for n in scored])
    device = pixels.device
    counts = torch.tensor([round(n * step * height * width) for n in scored], device=device)
    ranks = pixel_ranks(maps, (height, width)).to(device)
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=device).view(1, 3, 1, 1)
    if isinstance(seed, int):
        uniform = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    else:
        if len(seed) != batch:
            raise ValueError(f"{len(seed)} seeds for {batch} images")
        uniform = torch.stack([torch.rand(3, height, width, generator=torch.Generator().manual_seed(int(s)))
                               for s in seed])
    noise = (uniform.to(device, pixels.dtype) - mean_t) / std_t
    black = ((0.0 - mean_t) / std_t).expand(batch, 3, height, width)
    classes = classifier.to(device).float()
    n_frames = len(scored)

    def _frames(kind: str, lo: int, hi: int) -> Tensor:
        flat = torch.arange(lo, hi, device=device)
        image, frac = flat // n_frames, flat % n_frames
        changed = (ranks[image] < counts[frac, None, None])[:, None]  # pixels changed so far
        if kind == "deletion":
            return torch.where(changed, noise[image], pixels[image])
        return torch.where(changed, pixels[image], black[image])

    results = {}
    for kind in ("deletion", "insertion"):
        # frames are built per encoder batch (flat index = image * T + fraction), never all at once
        cosines = torch.cat([
            F.normalize(adapter.encode_image(_frames(kind, lo, min(lo + batch_size, batch * n_frames))).float(),
                        dim=-1) @ classes.T
            for lo in range(0, batch * n_frames, batch_size)]).reshape(batch, n_frames, -1).cpu()
        target = labels_t[:, None, None].expand(-1, n_frames, 1)
        score = cosines.gather(-1, target).squeeze(-1)
        results[kind] = {
            "accuracy": (cosines.argmax(dim=-1) == labels_t[:, None]).double().numpy(),
            "score": score.double().numpy(),
            "probability": (logit_scale * cosines).softmax(dim=-1).gather(-1, target).squeeze(-1).double().numpy(),
        }
    return PerturbationCurves(fractions=fractions, deletion=results["deletion"], insertion=results["insertion"])
