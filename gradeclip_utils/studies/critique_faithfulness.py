"""Parts 4-6 of the critique study (:mod:`.critique`): official and faithful maps scored by the unmodified model.

- ``faithfulness``: deletion, insertion and the pointing game against baselines, with paired differences and
  95% bootstrap intervals.
- ``sensitivity_n``: Ancona et al. (2018) with declared baselines (``baseline_pictures``).
- ``sanity``: cascading randomisation of both modes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import batch_maps, item_seed, tie_seeds_of
from ..metrics import cascading_randomisation, perturbation_curves, pointing_game
from ..stats import bootstrap_ci, paired_difference
from .critique_routes import MODES

BASELINES: tuple[str, ...] = ("black", "blurred", "mean colour")
FAITHFULNESS_BASELINES: tuple[str, ...] = ("raw_attention", "grad_cam", "random")


def load_items(items: Sequence[Any]) -> tuple[torch.Tensor, np.ndarray | None]:
    """The items' preprocessed pixels (B, 3, H, W) and their masks (None unless every item has one)."""
    loaded = [item.load() for item in items]
    masks = [m for _, m in loaded]
    return torch.stack([p for p, _ in loaded]), (None if any(m is None for m in masks) else np.stack(masks))


# ---------------------------------------------------------------------------------- 4. faithfulness
def _method_options(name: str, keys: Sequence[str]) -> tuple[str, dict[str, Any]]:
    if name in MODES:
        return "grad_eclip", {"mode": name}
    if name == "random":
        return name, {"seed": 0, "keys": list(keys)}
    return name, {}


def faithfulness(model: Any, data: Any, *, methods: Sequence[str] = MODES + FAITHFULNESS_BASELINES,
                 seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Deletion and insertion AUC (target cosine, the project protocol) and the pointing game for the maps
    of ``methods`` ("official", "faithful" or a registered baseline) on an ``evaluate`` EvalSet, all scored
    by the unmodified model; mean and 95% interval per method and paired differences against faithful."""
    pixels, masks = load_items(data.items)
    labels = [item.label for item in data.items]
    keys = [item.key for item in data.items]
    mean, std = model.normalization
    per: dict[str, dict[str, np.ndarray]] = {}
    for name in methods:
        method, options = _method_options(name, keys)
        maps = batch_maps(model, method, pixels, labels, data.classifier, options)
        curves = perturbation_curves(model.adapter, pixels.to(model.device), maps, data.classifier, labels, mean=mean,
                                     std=std, seed=[item_seed(seed, k) for k in keys],
                                     tie_seed=[tie_seeds_of(seed, k, 1)[0] for k in keys],
                                     logit_scale=model.adapter.logit_scale)
        per[name] = {"deletion": curves.auc("deletion", "score"), "insertion": curves.auc("insertion", "score")}
        if masks is not None:
            per[name]["pointing"] = pointing_game(maps, masks).astype(np.float64)
    result: dict[str, Any] = {"images": len(labels), "methods": list(methods), "metrics": list(per[methods[0]]),
                              "means": {}, "paired": {}}
    for name, values in per.items():
        result["means"][name] = {m: bootstrap_ci(v, resamples=resamples, seed=seed) for m, v in values.items()}
        if name != "faithful" and "faithful" in per:
            result["paired"][f"{name} - faithful"] = {
                m: paired_difference(v, per["faithful"][m], resamples=resamples, seed=seed) for m, v in values.items()}
    return result


# ---------------------------------------------------------------------------------- 5. sensitivity-n
def baseline_pictures(pixels: torch.Tensor, baseline: str, patch: int, mean: Sequence[float],
                      std: Sequence[float]) -> torch.Tensor:
    """The declared baseline of normalised pixels (B, 3, H, W): "black" (the black picture), "blurred" (a
    Gaussian blur, sigma one patch) or "mean colour" (each picture's mean colour everywhere)."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    if baseline == "black":
        return ((0.0 - mean_t) / std_t).expand_as(pixels).clone()
    if baseline == "mean colour":
        return pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels).clone()
    if baseline == "blurred":
        from torchvision.transforms.functional import gaussian_blur

        size = 4 * patch + 1
        return gaussian_blur(pixels, [size, size], [float(patch), float(patch)])
    raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


@torch.no_grad()
def _target_scores(model: Any, pictures: torch.Tensor, targets: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    out = [F.normalize(model.adapter.encode_image(pictures[i:i + batch_size].to(model.device)).float(), dim=-1).cpu()
           for i in range(0, len(pictures), batch_size)]
    return (torch.cat(out) * targets).sum(-1)


def sensitivity_n(model: Any, data: Any, *, sizes: Sequence[int] = (1, 2, 4, 8, 16, 32), subsets: int = 32,
                  baselines: Sequence[str] = BASELINES, seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Sensitivity-n (Ancona et al. 2018) for official and faithful maps: for ``subsets`` random sets of n
    patches (n in ``sizes``, at most half the grid), the Pearson correlation, over the sets, between the map's
    sum over the set and the drop of the target's cosine (the model's own forward) when the set's patches
    are replaced by the baseline. Per baseline: the mean correlation per mode and n, and the paired
    difference faithful - official per image (mean over n) with its 95% interval."""
    pixels, _ = load_items(data.items)
    labels = [item.label for item in data.items]
    keys = [item.key for item in data.items]
    targets = F.normalize(data.classifier.float(), dim=-1).cpu()[labels]
    ph, pw = model.adapter.patch_size
    gh, gw = pixels.shape[-2] // ph, pixels.shape[-1] // pw
    cells = gh * gw
    sizes = [n for n in sizes if n <= cells // 2]
    maps = {mode: batch_maps(model, "grad_eclip", pixels, labels, data.classifier, {"mode": mode})
            .reshape(len(labels), -1).numpy() for mode in MODES}
    mean, std = model.normalization
    full = _target_scores(model, pixels, targets).numpy()
    correlation = {b: {mode: np.zeros((len(labels), len(sizes))) for mode in MODES} for b in baselines}
    for b, baseline in enumerate(baselines):
        reference = baseline_pictures(pixels, baseline, ph, mean, std)
        for i in range(len(labels)):
            rng = np.random.default_rng(item_seed(seed, keys[i]))
            chosen = [[rng.choice(cells, size=n, replace=False) for _ in range(subsets)] for n in sizes]
            masks = torch.zeros(len(sizes) * subsets, cells, dtype=torch.bool)
            for j, sets in enumerate(chosen):
                for s, subset in enumerate(sets):
                    masks[j * subsets + s, subset] = True
            pixel_masks = masks.reshape(-1, 1, gh, 1, gw, 1).expand(-1, 1, gh, ph, gw, pw).reshape(
                -1, 1, gh * ph, gw * pw)
            pictures = torch.where(pixel_masks, reference[i:i + 1], pixels[i:i + 1])
            drops = full[i] - _target_scores(model, pictures, targets[i:i + 1]).numpy()
            for mode in MODES:
                sums = masks.float().numpy() @ maps[mode][i]
                for j in range(len(sizes)):
                    rows = slice(j * subsets, (j + 1) * subsets)
                    correlation[baseline][mode][i, j] = _pearson(sums[rows], drops[rows])
    result: dict[str, Any] = {"sizes": sizes, "subsets": subsets, "images": len(labels), "baselines": list(baselines),
                              "grid": [gh, gw], "per_baseline": {}}
    for baseline in baselines:
        c = correlation[baseline]
        result["per_baseline"][baseline] = {
            "baseline": baseline,
            "mean_by_n": {mode: c[mode].mean(0).tolist() for mode in MODES},
            "mean": {mode: float(c[mode].mean()) for mode in MODES},
            "faithful_minus_official": paired_difference(c["faithful"].mean(1), c["official"].mean(1),
                                                         resamples=resamples, seed=seed)}
    return result


# --------------------------------------------------------------------------------------- 6. sanity
def sanity(model: Any, data: Any, *, images: int = 2, seed: int = 0) -> dict[str, Any]:
    """Cascading randomisation (from the top block down) of both modes' maps on ``images`` items against
    their own targets: mean Spearman and SSIM with the original map per stage (``metrics.sanity``)."""
    pixels, _ = load_items(data.items[:images])
    targets = data.classifier[[item.label for item in data.items[:images]]]
    out = {}
    for mode in MODES:
        result = cascading_randomisation(model, pixels, targets, "grad_eclip", seed=seed, mode=mode)
        out[mode] = result.summary()
    return {"images": int(pixels.shape[0]), "stages": out}
