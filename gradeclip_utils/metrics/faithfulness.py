"""Deletion and insertion curves and their AUC (docs/method.md sections 7.3-7.6), batched on the model's device.

Pixels are ordered by the heat map (bilinearly upsampled to the image, most important first). Tied
pixels (many maps are exactly zero over most of the image after a ReLU) are ordered by a seeded random
permutation of the pixels (``ties="random"``, the default): the permutation depends only on the tie
seed, so two methods whose maps tie on the same pixels get the same order there, and an evaluation can
pass one seed per image, shared by every method, and repeat with a few seeds to see how much the order
of ties moves a result. ``ties="raster"`` keeps raster order and ``ties="numpy"`` numpy's
``argsort(-map)`` (the Grad-ECLIP authors' scripts; its tie order is implementation-defined). In steps of ``step`` (0.5%) of the pixels up to ``max_fraction`` (50%), deletion
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

from ..maps import normalise_maps, resize_maps
from ..methods.scores import own_probabilities, own_scores

__all__ = ["AUC_DEFINITION", "CURVE_MEASURES", "TIES", "PerturbationCurves", "area_under_curve",
           "authors_heatmap", "authors_perturbation_curves", "perturbation_curves", "perturbation_curves_over_ties", "pixel_order", "pixel_ranks",
           "shrink_to_640"]

AUC_DEFINITION = ("AUC = trapezoidal area under the curve over the changed-pixel fraction (0 to 50%, scored "
                  "every 5%), divided by the x-range (0.5): the curve's mean height. Deletion (pixels replaced "
                  "by random RGB, most important first): lower is better. Insertion (pixels copied into a black "
                  "image, most important first): higher is better.")
CURVE_MEASURES: tuple[str, ...] = ("accuracy", "score", "probability")
TIES: tuple[str, ...] = ("random", "raster", "numpy")


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


def pixel_order(values: Tensor | np.ndarray, *, ties: str = "random", seed: int = 0) -> Tensor:
    """Indices of a flat (P,) array of pixel values, largest first, ties ordered as ``ties`` says:
    "random" by the seeded random permutation ``randperm(P, seed)`` (a pure function of P and the
    seed), "raster" by position, "numpy" as ``numpy.argsort(-values)`` orders them."""
    flat = torch.as_tensor(np.asarray(values) if isinstance(values, np.ndarray) else values).reshape(-1)
    if not torch.isfinite(flat).all():
        raise ValueError("maps hold NaN or infinite values")
    if ties == "raster":
        return torch.sort(flat, descending=True, stable=True).indices
    if ties == "numpy":
        return torch.from_numpy(np.argsort(-flat.numpy()))
    if ties != "random":
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    permutation = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(int(seed)))
    return permutation[torch.sort(flat[permutation], descending=True, stable=True).indices]


def pixel_ranks(maps: Tensor | np.ndarray, size: tuple[int, int], *, ties: str = "random",
                seed: int | Sequence[int] = 0) -> Tensor:
    """Rank of every pixel (B, H, W): 0 for the most important; maps (B, h, w) are upsampled bilinearly.

    Ties are ordered as ``pixel_order`` says; ``seed`` is the tie seed, one for all maps or one per map.
    """
    up = resize_maps(maps, size, dtype=torch.float64)
    if up.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got {tuple(up.shape)}")
    flat = up.reshape(up.shape[0], -1)
    seeds = [int(seed)] * flat.shape[0] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != flat.shape[0]:
        raise ValueError(f"{len(seeds)} tie seeds for {flat.shape[0]} maps")
    order = torch.stack([pixel_order(row, ties=ties, seed=s) for row, s in zip(flat.cpu(), seeds)]) \
        if flat.shape[0] else torch.zeros_like(flat, dtype=torch.long)
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

    insertion_fractions: np.ndarray | None = None  # when insertion is scored elsewhere (the authors' protocol)

    def auc(self, kind: str, measure: str = "score") -> np.ndarray:
        """Per-image AUC (B,) of one curve (see ``AUC_DEFINITION``) over its points up to 50% (the authors'
        insertion also scores the full image, which is the same for every method and left out)."""
        curves = {"deletion": self.deletion, "insertion": self.insertion}[kind]
        x = self.fractions if kind == "deletion" or self.insertion_fractions is None else self.insertion_fractions
        keep = np.asarray(x) <= 0.5 + 1e-9
        return area_under_curve(np.asarray(x)[keep], curves[measure][..., keep])


@torch.no_grad()
def perturbation_curves(adapter, pixels: Tensor, maps: Tensor | np.ndarray, classifier: Tensor, labels: Sequence[int],
                        *, mean: Sequence[float], std: Sequence[float], step: float = 0.005,
                        max_fraction: float = 0.5, score_every: int = 10, seed: int | Sequence[int] = 0,
                        logit_scale: float = 100.0, batch_size: int = 128, ties: str = "random",
                        tie_seed: int | Sequence[int] = 0) -> PerturbationCurves:
    """Deletion and insertion curves for B images (normalised pixels (B, 3, H, W)), their maps (B, h, w)
    for the target class ``labels[b]`` of a zero-shot ``classifier`` (C, D) of unit class embeddings.

    ``mean``/``std`` are the model's normalisation (to make random RGB and black pictures); every
    modified picture goes through ``adapter.encode_image`` in batches of ``batch_size``. ``seed`` draws
    the random pictures: one seed for the batch, or one per image (so that an image gets the same
    random picture whatever batch it is in, e.g. for every method it is explained by). ``ties`` and
    ``tie_seed`` (one, or one per image) order tied pixels (see ``pixel_order``).
    """
    return perturbation_curves_over_ties(adapter, pixels, maps, classifier, labels, mean=mean, std=std, step=step,
                                         max_fraction=max_fraction, score_every=score_every, seed=seed,
                                         logit_scale=logit_scale, batch_size=batch_size, ties=ties,
                                         tie_seeds=[tie_seed])[0]


@torch.no_grad()
def perturbation_curves_over_ties(adapter, pixels: Tensor, maps: Tensor | np.ndarray, classifier: Tensor,
                                  labels: Sequence[int], *, mean: Sequence[float], std: Sequence[float],
                                  tie_seeds: Sequence[int | Sequence[int]], step: float = 0.005,
                                  max_fraction: float = 0.5, score_every: int = 10, seed: int | Sequence[int] = 0,
                                  logit_scale: float = 100.0, batch_size: int = 128,
                                  ties: str = "random") -> list[PerturbationCurves]:
    """``perturbation_curves`` once per tie seed in ``tie_seeds`` (each one seed, or one per image), the
    same curves as separate calls give. A picture that two tie orders make alike (the pixels changed at a
    step are the same set: wherever the step's boundary falls between two distinct map values, and
    always at 0%) is encoded once, under the first tie seed: the extra tie seeds cost only the pictures
    whose boundary falls inside a tie (none for maps without ties)."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    if len(tie_seeds) < 1:
        raise ValueError("need at least one tie seed")
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
    ranks = torch.stack([pixel_ranks(maps, (height, width), ties=ties, seed=t).to(device) for t in tie_seeds])
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
    n_ties, n_frames = len(tie_seeds), len(scored)

    # (tie order, image, fraction) of every picture to encode: all under the first tie order, then only
    # those another order changes differently (``source`` says which encoded picture each one is)
    frames = [(0, b, f) for b in range(batch) for f in range(n_frames)]
    source = torch.empty(n_ties, batch, n_frames, dtype=torch.long)
    source[0] = torch.arange(batch * n_frames).view(batch, n_frames)
    for t in range(1, n_ties):
        for b in range(batch):
            for f in range(n_frames):
                if torch.equal(ranks[t, b] < counts[f], ranks[0, b] < counts[f]):
                    source[t, b, f] = source[0, b, f]
                else:
                    source[t, b, f] = len(frames)
                    frames.append((t, b, f))
    index = torch.tensor(frames, device=device).view(-1, 3)

    def _frames(kind: str, lo: int, hi: int) -> Tensor:
        tie, image, frac = index[lo:hi].unbind(1)
        changed = (ranks[tie, image] < counts[frac, None, None])[:, None]  # pixels changed so far
        if kind == "deletion":
            return torch.where(changed, noise[image], pixels[image])
        return torch.where(changed, pixels[image], black[image])

    results: list[dict[str, dict[str, np.ndarray]]] = [{} for _ in range(n_ties)]
    for kind in ("deletion", "insertion"):
        # pictures are built per encoder batch, never all at once; the model's own scores (a CLIP's cosines, a
        # classifier's logits) and a classifier's probabilities (over all its classes, not only the C given)
        parts = [_encoded(adapter, _frames(kind, lo, min(lo + batch_size, len(frames))), classes)
                 for lo in range(0, len(frames), batch_size)]
        encoded = torch.cat([own for own, _ in parts]).cpu()
        probabilities = None if parts[0][1] is None else torch.cat([p for _, p in parts]).cpu()
        target = labels_t[:, None, None].expand(-1, n_frames, 1)
        for t in range(n_ties):
            cosines = encoded[source[t]]  # (B, T, C)
            score = cosines.gather(-1, target).squeeze(-1)
            probability = ((logit_scale * cosines).softmax(dim=-1) if probabilities is None
                           else probabilities[source[t]]).gather(-1, target).squeeze(-1)
            results[t][kind] = {
                "accuracy": (cosines.argmax(dim=-1) == labels_t[:, None]).double().numpy(),
                "score": score.double().numpy(),
                "probability": probability.double().numpy(),
            }
    return [PerturbationCurves(fractions=fractions, deletion=r["deletion"], insertion=r["insertion"]) for r in results]


def _encoded(adapter, pictures: Tensor, classes: Tensor) -> tuple[Tensor, Tensor | None]:
    """The (N, C) own scores of N pictures against the C class rows (``methods.scores.own_scores``: cosines
    for a CLIP, logits for a classifier) and, for a classifier, its (N, C) probabilities of the C classes."""
    embedding = adapter.encode_image(pictures)
    return own_scores(adapter, embedding, classes), own_probabilities(adapter, embedding, classes)


# ------------------------------------------------------------------ the Grad-ECLIP authors' protocol
def shrink_to_640(picture):
    """The authors' evaluation scripts: a picture whose short side exceeds 640 is resized (PIL's default
    resampling) to int(side / scale) with scale = short side / 640; smaller pictures are kept."""
    width, height = picture.size
    if min(width, height) <= 640:
        return picture
    scale = min(width, height) / 640
    return picture.resize((int(width / scale), int(height / scale)))


def authors_heatmap(grid_map: Tensor, size: tuple[int, int], via: tuple[int, int] | None = None) -> np.ndarray:
    """The authors' ``generate_hm``: min-max normalise the map where it was computed (patch grid), then
    resize it (bilinear) to the picture's (H, W). ``via``: the map first comes upsampled (bilinear) to
    that size by the method's own code, as M2IB's ``vision_heatmap`` (224) and CLIP Surgery's
    ``get_similarity_map`` (the input's size) give it, and is then min-max normalised and resized as
    torchvision's ``Resize((H, W))`` resizes a tensor (bilinear, antialiased). A constant map gives zeros
    (where the authors' code would divide by zero)."""
    grid_map = grid_map.detach().float()
    if via is None:
        return resize_maps(normalise_maps(grid_map), tuple(size)).numpy()
    first = normalise_maps(resize_maps(grid_map, tuple(via)))
    return F.interpolate(first[None, None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0].numpy()


@torch.no_grad()
def authors_perturbation_curves(encode, preprocess, picture, heatmap: np.ndarray, classifier: Tensor, label: int,
                                *, steps: int = 100, score_every: int = 10, seed: int = 0, ties: str = "numpy",
                                tie_seed: int = 0, logit_scale: float = 100.0, batch_size: int = 128
                                ) -> PerturbationCurves:
    """Deletion and insertion exactly as the Grad-ECLIP authors' ``imagenet_eval_deletion.py`` and
    ``imagenet_eval_insertion.py`` run them, for one native RGB ``picture`` (PIL, after ``shrink_to_640``)
    and its ``heatmap`` (H, W) at the picture's size.

    Pixels are taken in ``numpy.argsort(-heatmap)`` order (``ties``: see ``pixel_order``), int(H W /
    (2 steps)) (at least 1) per step; deletion gives the pixels of each step new uniform random values
    ``torch.rand(n, 3) * 255`` (truncated to uint8), insertion copies them into a black picture; every
    ``score_every`` steps the picture goes through ``preprocess`` (the model's resize and crop) and
    ``encode``. Deletion is also scored on the picture itself (0%), insertion at 5% ... 50% and on the
    picture itself (stored at fraction 1.0). ``label`` is the class scored (the ground truth, also when
    the map explains the prediction). Returns curves of one image, nominal fractions (the pixels changed
    at 5 k% are 10 k int(H W / 200)). The pictures go through ``encode`` ``batch_size`` at a time.
    """
    from PIL import Image

    image = np.array(picture.convert("RGB")).copy()
    height, width = image.shape[:2]
    if heatmap.shape != (height, width):
        raise ValueError(f"heatmap {heatmap.shape} does not match the picture's {(height, width)}")
    order = pixel_order(torch.from_numpy(np.ascontiguousarray(heatmap.reshape(-1))), ties=ties, seed=tie_seed).numpy()
    once = max(1, int(height * width / (2 * steps)))
    generator = torch.Generator().manual_seed(int(seed))
    deleted, inserted = image.copy(), np.zeros(image.shape)
    deletion_frames, insertion_frames = [preprocess(picture)], []
    for step in range(1, steps + 1):
        index = order[(step - 1) * once:step * once]
        ys, xs = index // width, index % width
        deleted[ys, xs, :] = (torch.rand(len(index), 3, generator=generator) * 255.).numpy()
        inserted[ys, xs, :] = image[ys, xs, :]
        if step % score_every == 0:
            deletion_frames.append(preprocess(Image.fromarray(np.uint8(deleted))))
            insertion_frames.append(preprocess(Image.fromarray(np.uint8(inserted))))
    insertion_frames.append(preprocess(picture))
    classes = classifier.float()
    results = {}
    for kind, frames in (("deletion", deletion_frames), ("insertion", insertion_frames)):
        cosines = torch.cat([F.normalize(encode(torch.stack(frames[lo:lo + batch_size]).to(classes.device)).float(),
                                         dim=-1) @ classes.T for lo in range(0, len(frames), batch_size)]).cpu()
        results[kind] = {
            "accuracy": (cosines.argmax(dim=-1) == label).double().numpy()[None],
            "score": cosines[:, label].double().numpy()[None],
            "probability": (logit_scale * cosines).softmax(dim=-1)[:, label].double().numpy()[None],
        }
    points = steps // score_every
    fractions = np.array([n * score_every / (2 * steps) for n in range(points + 1)])
    return PerturbationCurves(fractions=fractions, deletion=results["deletion"], insertion=results["insertion"],
                              insertion_fractions=np.append(fractions[1:], 1.0))
