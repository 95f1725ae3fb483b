"""Is Grad-ECLIP faithful? The critique of Cui and Fan (2026) measured, on any model a user loads.

Five measurements, each a function returning plain numbers (JSON-ready), and ``claims`` turns them into
the sentences that the notebook (08) and ``docs/critique.md`` print, so that every stated number is
read from a run:

1. ``equivalence``: Grad-ECLIP's channel term is the gradient of the score with respect to the class
   token's attention probabilities. The class token's attention output is o = sum_i A[cls, i] v_i, so
   dS/dA^h[cls, i] = (dS/do^h) . v_i^h, and the sum over heads h is sum_c w_c v_i[c]. Checked against
   ``ReLU(lambda_i sum_h dS/dA^h[cls, i])`` computed by autograd on the probabilities the adapter keeps
   (``keep_probs=True``), official mode (one head) and faithful mode (the model's heads), with and
   without the spatial weight lambda, one block and several. ``per_head_terms`` gives the heads' terms.
2. ``route_cost``: the two routes timed side by side (the attention route must keep A and its
   gradient), and the model's own (fused where it has one) forward against a forward that materialises A.
3. ``score_shift``: per image-prompt pair, the model's own forward against the scores of the explained
   forward in a 2 x 2 design: heads (the model's, ``mode="faithful"``, or one, ``mode="official"``) x
   input (native keep-size or the model's resolution); how often the best prompt changes; zero-shot
   accuracy under each.
4. ``faithfulness``: deletion, insertion (the project protocol: the model's preprocessed input at its
   resolution, every curve scored by the unmodified model) and the pointing game for official maps,
   faithful maps and baselines, with paired differences and 95% bootstrap intervals.
5. ``sensitivity_n``: Ancona et al. (2018) for declared baselines (black, blurred, mean colour);
   ``sanity``: cascading randomisation for both modes.

Every part runs on the model given (``--model``, by default the embedded one, and any family); a second run
on a model with random weights (``--random-model``, by default ViT-B-16 at 224 x 224, built offline) reports
only what random weights can show: the equivalence, the cost and the score shift of official mode.

    gradeclip critique --out outputs/critique --doc docs/critique.md
    python -m gradeclip_utils.studies.critique --out outputs/critique --doc docs/critique.md   # the same
    gradeclip critique --model ViT-B-16 --pretrained openai --imagenet /data/imagenet/val --random-model none
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import batch_maps, imagenet_set, item_seed, synthetic_set, tie_seeds_of
from ..explain import explain_image
from ..guard import explaining
from ..loading import load_model
from ..methods import get_image_method
from ..metrics import cascading_randomisation, perturbation_curves, pointing_game
from ..prompts import encode_texts
from ..stats import bootstrap_ci, paired_difference
from ..synthetic.captions import class_prompts
from ..synthetic.dataset import HELDOUT_SEED_START
from ..synthetic.evaluate import OFFSETS
from ..synthetic.scenes import generate_scene
from .common import is_synthetic, tune_threads

MODES: tuple[str, ...] = ("official", "faithful")
BASELINES: tuple[str, ...] = ("black", "blurred", "mean colour")
FAITHFULNESS_BASELINES: tuple[str, ...] = ("raw_attention", "grad_cam", "random")
ALL_PARTS: tuple[str, ...] = ("equivalence", "cost", "scores", "faithfulness", "sensitivity", "sanity")
#: what random weights can show (a model without trained weights has no accuracy or localisation to explain)
RANDOM_WEIGHT_PARTS: tuple[str, ...] = ("equivalence", "cost", "scores")
#: the random-weight model of ``gradeclip critique`` (``--random-model``), built offline at its 224 x 224
DEFAULT_RANDOM_MODEL = "ViT-B-16"
#: the random-weight run's sizes: images of the equivalence and the cost, and zero-shot scenes of the score shift
RANDOM_IMAGES, RANDOM_ZERO_SHOT = 2, 16


def parts_for(model: Any) -> tuple[str, ...]:
    """Every part for trained weights (and the embedded model); only the equivalence, the cost and the
    score shift for random weights (``pretrained=None`` on a model other than the embedded one)."""
    return ALL_PARTS if is_synthetic(model) or getattr(model, "pretrained", None) else RANDOM_WEIGHT_PARTS


# ----------------------------------------------------------------------------------- 1. equivalence
def _spatial_weight(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """lambda = minmax over patches of cos(q_cls, k_i) (raw q and k), (B, P) float32."""
    cos = F.cosine_similarity(q[:, :1].float(), k[:, 1:].float(), dim=-1)
    low, high = cos.amin(-1, keepdim=True), cos.amax(-1, keepdim=True)
    span = high - low
    return torch.where(span > 0, (cos - low) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(cos))


def attention_gradients(model: Any, pixels: torch.Tensor, targets: torch.Tensor, *, layers: Sequence[int] = (-1,),
                        mode: str = "faithful") -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor],
                                                          torch.Tensor, tuple[int, int]]:
    """dS[b, k] / dA^h[cls, i] by autograd on the attention probabilities of the explained blocks.

    Returns, per absolute block, the gradients (B, K, H, P) over patch keys i and the spatial weights
    (B, P); the scores (B, K) and the grid. All K targets in one batched backward (``torch.func.vmap``),
    whose output is the full (K, B, H, N, N) gradient of every probability: what this route costs.
    """
    adapter = model.adapter
    blocks = adapter.resolve_layers(list(layers), "image")
    targets = targets.to(model.device).float()
    with explaining(model.model):
        trace = adapter.trace_image(pixels.to(model.device), blocks, mode=mode, keep_probs=True)
        scores = F.normalize(trace.embedding.float(), dim=-1) @ targets.T
        probs = [trace.blocks[b].probs for b in blocks]
        count = targets.shape[0]
        cotangents = torch.eye(count, device=scores.device)[:, None, :].expand(count, *scores.shape)

        def pull(cotangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return torch.autograd.grad(scores, probs, grad_outputs=cotangent, retain_graph=True)

        grads = torch.func.vmap(pull)(cotangents)
        gradients = {b: g[:, :, :, 0, 1:].float().permute(1, 0, 2, 3).detach() for b, g in zip(blocks, grads)}
        weights = {b: _spatial_weight(trace.blocks[b].q, trace.blocks[b].k) for b in blocks}
        grid = trace.grid
        del trace, grads, probs
    return gradients, weights, scores.detach(), grid


def attention_route_maps(model: Any, pixels: torch.Tensor, targets: torch.Tensor, *, layers: Sequence[int] = (-1,),
                         mode: str = "faithful", spatial_weight: bool = True) -> torch.Tensor:
    """sum over blocks of ReLU(lambda_i sum_h dS/dA^h[cls, i]) (without lambda when not ``spatial_weight``):
    (B, K, h, w), from the attention-probability gradients."""
    gradients, weights, _, grid = attention_gradients(model, pixels, targets, layers=layers, mode=mode)
    total = None
    for block, grad in gradients.items():
        term = grad.sum(dim=2)
        if spatial_weight:
            term = term * weights[block][:, None, :]
        term = term.relu()
        total = term if total is None else total + term
    return total.reshape(*total.shape[:2], *grid).cpu()


def grad_eclip_maps(model: Any, pixels: torch.Tensor, targets: torch.Tensor, *, layers: Sequence[int] = (-1,),
                    mode: str = "faithful", spatial_weight: bool = True) -> torch.Tensor:
    """The package's Grad-ECLIP maps (B, K, h, w) for preprocessed ``pixels`` (raw q and k)."""
    method = "grad_eclip" if spatial_weight else "grad_eclip_no_spatial"
    return explain_image(model, pixels, targets, method=method, layers=list(layers), mode=mode, qk="raw",
                         progress=False).maps


def equivalence(model: Any, pixels: torch.Tensor, targets: torch.Tensor,
                layer_sets: Sequence[Sequence[int]] = ((-1,), (-3, -2, -1))) -> dict[str, Any]:
    """The largest difference between Grad-ECLIP's maps and the attention route's, per mode, spatial weight
    and block set; ``scale`` is the largest map value (what the difference is relative to)."""
    rows = []
    for mode in MODES:
        for spatial in (False, True):
            for layers in layer_sets:
                ours = grad_eclip_maps(model, pixels, targets, layers=layers, mode=mode, spatial_weight=spatial)
                theirs = attention_route_maps(model, pixels, targets, layers=layers, mode=mode, spatial_weight=spatial)
                rows.append({"mode": mode, "spatial_weight": spatial,
                             "layers": model.adapter.resolve_layers(list(layers), "image"),
                             "max_abs_diff": float((ours - theirs).abs().max()), "scale": float(ours.abs().max())})
    return {"rows": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "pixels": list(pixels.shape), "targets": int(targets.shape[0])}


def per_head_terms(model: Any, pixels: torch.Tensor, targets: torch.Tensor, *, layer: int = -1) -> dict[str, Any]:
    """Faithful mode's per-head terms lambda_i dS/dA^h[cls, i] of one block (image 0, target 0) and how they
    sum: the heads' sum against Grad-ECLIP's pre-ReLU channel term (its ReLU is the map), and the share of
    patches where some head's term has the opposite sign of the sum (heads that cancel)."""
    gradients, weights, _, grid = attention_gradients(model, pixels[:1], targets[:1], layers=(layer,), mode="faithful")
    block = next(iter(gradients))
    terms = gradients[block][0, 0] * weights[block][0][None]  # (H, P)
    total = terms.sum(0)
    ours = grad_eclip_maps(model, pixels[:1], targets[:1], layers=(layer,), mode="faithful")[0, 0].reshape(-1)
    opposite = ((terms * total[None]) < 0).any(0)
    return {"block": block, "heads": int(terms.shape[0]), "grid": list(grid),
            "terms": terms.reshape(-1, *grid).tolist(), "sum": total.reshape(grid).tolist(),
            "sum_relu_vs_grad_eclip": float((total.relu() - ours).abs().max()),
            "opposite_share": float(opposite.float().mean())}


# ------------------------------------------------------------------------------------------ 2. cost
def _median_time(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def route_cost(model: Any, pixels: torch.Tensor, targets: torch.Tensor, *, repeats: int = 5,
               layers: Sequence[int] = (-1,)) -> dict[str, Any]:
    """Median seconds of each route, timed interleaved (each repeat runs all of them in turn, after one
    warm-up): Grad-ECLIP (the registered method, as ``explain_image`` runs it), the attention route (``attention_route_maps``), the model's
    own forward (fused attention where the model has it) and a forward through every block with A kept
    (``trace_image`` with ``keep_probs``, no graph). ``probability_bytes``: the A of the explained blocks
    that the attention route keeps, and its gradient is as large again for each target."""
    adapter, device = model.adapter, model.device
    blocks = adapter.resolve_layers(list(layers), "image")
    everything = list(range(adapter.num_image_blocks))
    runs: dict[str, Callable[[], Any]] = {
        "grad_eclip": lambda: _grad_eclip_method(model, pixels, targets, blocks),
        "attention_route": lambda: attention_route_maps(model, pixels, targets, layers=layers, mode="faithful"),
        "native_forward": lambda: adapter.native_encode_image(pixels.to(device)),
        "explicit_forward": lambda: _explicit_forward(model, pixels, everything),
    }
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_median_time(fn, device))
    median = {name: float(np.median(values)) for name, values in times.items()}
    tokens = int(np.prod(adapter.image.check_pixels(pixels))) + 1
    heads = _heads(model, pixels[:1], blocks[-1])
    element = 4 if adapter.dtype == torch.float32 else 2
    return {"seconds": median, "repeats": repeats, "images": int(pixels.shape[0]), "targets": int(targets.shape[0]),
            "layers": blocks, "attention_over_grad_eclip": median["attention_route"] / median["grad_eclip"],
            "explicit_over_native": median["explicit_forward"] / median["native_forward"],
            "probability_bytes": int(pixels.shape[0] * heads * tokens * tokens * element * len(blocks)),
            "device": str(device), "threads": torch.get_num_threads()}


def _grad_eclip_method(model: Any, pixels: torch.Tensor, targets: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """The registered Grad-ECLIP function called as ``explain_image`` calls it, without its input handling, so
    that both routes are timed from the same preprocessed pixels."""
    with explaining(model.model):
        return get_image_method("grad_eclip")(model.adapter, pixels.to(model.device), targets.to(model.device),
                                              layers=blocks, mode="faithful", qk="raw").maps


def _explicit_forward(model: Any, pixels: torch.Tensor, blocks: list[int]) -> None:
    with torch.no_grad():
        model.adapter.trace_image(pixels.to(model.device), blocks, keep_probs=True)


def _heads(model: Any, pixels: torch.Tensor, block: int) -> int:
    with torch.no_grad():
        return int(model.adapter.trace_image(pixels.to(model.device), [block]).blocks[block].heads)


# ------------------------------------------------------------------------------------ 3. score shift
def synthetic_zero_shot(model: Any, n: int, offset: int = 0) -> tuple[list[Any], list[int], list[str]]:
    """``n`` single-object held-out scenes (the embedded model's zero-shot protocol), their labels among
    the 35 colour x shape prompts, and the prompts."""
    prompts, labels = class_prompts()
    scenes = [generate_scene(HELDOUT_SEED_START + OFFSETS["zero_shot"] + offset + i, n_objects=1,
                             with_captions=False) for i in range(n)]
    index = {label: i for i, label in enumerate(labels)}
    return [s.image for s in scenes], [index[(s.objects[0].colour, s.objects[0].shape)] for s in scenes], prompts


def score_shift(model: Any, pictures: Sequence[Any], labels: Sequence[int], class_names: Sequence[str],
                classifier: torch.Tensor | None = None, *, layers: Sequence[int] = (-1,)) -> dict[str, Any]:
    """The model's own forward (its preprocessing) against the explained forward of each 2 x 2 cell, per
    (picture, class prompt) pair: mean and largest |score difference|, share of pictures whose best prompt
    changes, and zero-shot top-1 under each. ``classifier`` (C, D): by default the class names' embeddings."""
    if classifier is None:
        classifier = encode_texts(model, list(class_names))
    classifier = F.normalize(classifier.float(), dim=-1)
    labels_t = torch.as_tensor(list(labels))
    pixels = torch.stack([model.preprocess(p) for p in pictures]).float()
    own = torch.cat([F.normalize(model.adapter.native_encode_image(pixels[i:i + 32]).float(), dim=-1).cpu()
                     for i in range(0, len(pixels), 32)]) @ classifier.cpu().T
    cells, raw = {}, {}
    for heads, mode in (("model's heads", "faithful"), ("one head", "official")):
        for resolution in ("native", "model"):
            scores = explain_image(model, list(pictures), classifier, labels=list(class_names), layers=list(layers),
                                   mode=mode, resolution=resolution, progress=False).scores
            raw[(mode, resolution)] = scores
            diff = (scores - own).abs()
            cells[f"{heads}, {resolution}"] = {
                "heads": heads, "mode": mode, "resolution": resolution,
                "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
                "best_changed": float((scores.argmax(1) != own.argmax(1)).float().mean()),
                "accuracy": float((scores.argmax(1) == labels_t).float().mean())}
    # each change on its own: the input size with the heads fixed, the heads with the input fixed
    resolution_effect = {mode: float((raw[(mode, "native")] - raw[(mode, "model")]).abs().mean()) for mode in MODES}
    heads_effect = {res: float((raw[("official", res)] - raw[("faithful", res)]).abs().mean())
                    for res in ("native", "model")}
    return {"pairs": int(own.numel()), "images": len(pictures), "classes": len(class_names),
            "own_accuracy": float((own.argmax(1) == labels_t).float().mean()), "cells": cells,
            "resolution_effect": resolution_effect, "heads_effect": heads_effect}


# ---------------------------------------------------------------------------------- 4. faithfulness
def _load(items: Sequence[Any]) -> tuple[torch.Tensor, np.ndarray | None]:
    loaded = [item.load() for item in items]
    masks = [m for _, m in loaded]
    return torch.stack([p for p, _ in loaded]), (None if any(m is None for m in masks) else np.stack(masks))


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
    pixels, masks = _load(data.items)
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
    pixels, _ = _load(data.items)
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
    pixels, _ = _load(data.items[:images])
    targets = data.classifier[[item.label for item in data.items[:images]]]
    out = {}
    for mode in MODES:
        result = cascading_randomisation(model, pixels, targets, "grad_eclip", seed=seed, mode=mode)
        out[mode] = result.summary()
    return {"images": int(pixels.shape[0]), "stages": out}


# ----------------------------------------------------------------------------------------- the study
def run_study(model: Any, *, parts: Sequence[str] | None = None, quick: bool = False, images: int | None = None,
              zero_shot: int | None = None, imagenet: str | Path | None = None, repeats: int | None = None,
              seed: int = 0) -> dict[str, Any]:
    """Every part of the study (``parts``: by default ``parts_for(model)``) at the default sizes (``quick``:
    small). Images for the equivalence and the cost: the first faithfulness items' pixels (synthetic
    scenes) and a non-square crop of them; ``imagenet``: a folder of class subfolders for the score shift
    and the faithfulness items (``evaluation.imagenet_set``)."""
    parts = tuple(parts or parts_for(model))
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {ALL_PARTS}")
    started = time.perf_counter()
    images = images or (6 if quick else 24)
    zero_shot = zero_shot or (24 if quick else 140)
    repeats = repeats or (2 if quick else 5)
    data = (imagenet_set(model, Path(imagenet), images) if imagenet
            else synthetic_set(model, images))
    results: dict[str, Any] = {"model": model.describe(), "parts": list(parts), "quick": quick,
                               "weights": "random" if parts_for(model) == RANDOM_WEIGHT_PARTS else "trained",
                               "dataset": "imagenet folder" if imagenet else "synthetic held-out scenes",
                               "seed": seed, "threads": torch.get_num_threads()}
    pixels, _ = _load(data.items[:2])
    targets = data.classifier[:3]
    if "equivalence" in parts:
        ph, pw = model.adapter.patch_size
        wide = pixels[..., : max(ph, (pixels.shape[-2] // ph - 2) * ph), :]  # a non-square input: fewer rows
        results["equivalence"] = equivalence(model, wide, targets)
        results["equivalence"]["square"] = equivalence(model, pixels, targets, layer_sets=((-1,),))["max_abs_diff"]
        results["equivalence"]["square_pixels"] = list(pixels.shape)
        results["per_head"] = per_head_terms(model, pixels, data.classifier[[data.items[0].label]])
    if "cost" in parts:
        results["cost"] = route_cost(model, pixels, data.classifier[:8], repeats=repeats)
    if "scores" in parts:
        if imagenet:
            pictures, labels, names = [i.picture() for i in data.items], [i.label for i in data.items], data.class_names
            results["scores"] = score_shift(model, pictures, labels, names, data.classifier)
        else:
            pictures, labels, names = synthetic_zero_shot(model, zero_shot)
            results["scores"] = score_shift(model, pictures, labels, names)
    if "faithfulness" in parts:
        results["faithfulness"] = faithfulness(model, data, seed=seed)
    if "sensitivity" in parts:
        results["sensitivity"] = sensitivity_n(model, data, subsets=8 if quick else 32, seed=seed,
                                               sizes=(1, 4, 16) if quick else (1, 2, 4, 8, 16, 32))
    if "sanity" in parts:
        results["sanity"] = sanity(model, data, images=1 if quick else 2, seed=seed)
    results["seconds"] = time.perf_counter() - started
    return results


def random_weight_study(name: str = DEFAULT_RANDOM_MODEL, *, device: str | None = None, images: int = RANDOM_IMAGES,
                        zero_shot: int = RANDOM_ZERO_SHOT, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """``run_study`` on ``name`` with random weights (``load_model(name, pretrained=None)``, offline; the weights
    drawn from ``seed``): only ``RANDOM_WEIGHT_PARTS``, on ``images`` images (equivalence, cost) and ``zero_shot``
    scenes against the 35 class prompts (score shift) at the model's resolution."""
    torch.manual_seed(seed)  # open_clip draws the random weights from torch's generator
    model = load_model(name, pretrained=None, device=device)
    tune_threads(model)
    return run_study(model, parts=RANDOM_WEIGHT_PARTS, images=images, zero_shot=zero_shot, repeats=repeats, seed=seed)


def _interval(triple: Sequence[float], digits: int = 3) -> str:
    mean, low, high = triple
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def claims(results: dict[str, Any]) -> list[str]:
    """The study's findings as sentences, every number read from ``results`` (what the notebook prints)."""
    out = []
    if "equivalence" in results:
        e = results["equivalence"]
        out.append("Grad-ECLIP's channel term is the gradient of the score with respect to the class token's attention "
                   "probabilities (o_cls = sum_i A[cls,i] v_i, so dS/dA[cls,i] = dS/do_cls . v_i): over both modes, "
                   "with and without the spatial weight, one block and three, its maps and ReLU(lambda_i sum_h "
                   f"dS/dA^h[cls,i]) by autograd differ by at most {e['max_abs_diff']:.2e} on a "
                   f"{e['pixels'][-2]} x {e['pixels'][-1]} input (square input, last block: {e['square']:.2e}).")
    if "per_head" in results:
        h = results["per_head"]
        out.append(f"In faithful mode the {h['heads']} heads' terms of block {h['block']} sum to the channel term "
                   f"(ReLU of the sum against Grad-ECLIP's map: {h['sum_relu_vs_grad_eclip']:.2e}); on "
                   f"{_percent(h['opposite_share'])} of the patches some head's term has the opposite sign of the sum.")
    if "cost" in results:
        c = results["cost"]
        s = c["seconds"]
        out.append(f"The attention route took {c['attention_over_grad_eclip']:.2f}x Grad-ECLIP's time "
                   f"({s['attention_route'] * 1e3:.1f} ms against {s['grad_eclip'] * 1e3:.1f} ms for {c['images']} "
                   f"images and {c['targets']} prompts, median of {c['repeats']}) and keeps "
                   f"{c['probability_bytes'] / 1e6:.2f} MB of attention probabilities (and a gradient as large per "
                   f"prompt); a forward that materialises A in every block took {c['explicit_over_native']:.2f}x the "
                   "model's own forward.")
    if "scores" in results:
        r = results["scores"]
        official = r["cells"]["one head, model"]
        faithful = r["cells"]["model's heads, model"]
        native = r["cells"]["one head, native"]
        native_faithful = r["cells"]["model's heads, native"]
        out.append(f"Official mode changes the model's scores: over {r['pairs']} image-prompt pairs the recomputed "
                   f"cosine differs from the model's own by {official['mean_abs_diff']:.4f} on average (at most "
                   f"{official['max_abs_diff']:.4f}) at the model's resolution, and the best prompt changed for "
                   f"{_percent(official['best_changed'])} of the {r['images']} images; faithful mode differs by at most "
                   f"{faithful['max_abs_diff']:.1e}.")
        out.append(f"Separated: one head instead of the model's heads moves the scores by "
                   f"{r['heads_effect']['model']:.4f} on average at the model's resolution "
                   f"({r['heads_effect']['native']:.4f} on native input); native input instead of the model's "
                   f"resolution moves them by {r['resolution_effect']['faithful']:.4f} with the model's heads "
                   f"({r['resolution_effect']['official']:.4f} with one head).")
        if results.get("weights") != "random":  # random weights classify at chance: nothing to report
            out.append(f"Zero-shot accuracy: {_percent(r['own_accuracy'])} under the model's own forward, "
                       f"{_percent(official['accuracy'])} under official mode's, {_percent(faithful['accuracy'])} "
                       f"under faithful mode's (native input: {_percent(native['accuracy'])} official, "
                       f"{_percent(native_faithful['accuracy'])} faithful).")
    if "faithfulness" in results:
        f = results["faithfulness"]
        p = f["paired"].get("official - faithful", {})
        text = [f"{m} {_interval(p[m])}" for m in ("deletion", "insertion", "pointing") if m in p]
        out.append(f"Scored by the unmodified model on {f['images']} images, official minus faithful maps (95% "
                   "intervals): " + "; ".join(text) + " (deletion: lower is better; insertion and pointing: higher).")
    if "sensitivity" in results:
        s = results["sensitivity"]
        parts = []
        for baseline, r in s["per_baseline"].items():
            d = r["faithful_minus_official"]
            better = ("faithful correlates better" if d[1] > 0 else "official correlates better" if d[2] < 0
                      else "the interval includes zero: no mode correlates better at 95%")
            parts.append(f"baseline {baseline}: faithful {r['mean']['faithful']:.3f}, official "
                         f"{r['mean']['official']:.3f}, difference {_interval(d)} ({better})")
        out.append(f"Sensitivity-n (mean Pearson correlation over n = {s['sizes']}, {s['subsets']} subsets each): "
                   + "; ".join(parts) + ".")
    if "sanity" in results:
        stages = results["sanity"]["stages"]
        text = [f"{mode}: Spearman {rows[1]['spearman']:.3f} after the first stage ({rows[1]['stage']}), "
                f"{rows[-1]['spearman']:.3f} when all are randomised" for mode, rows in stages.items()]
        out.append("Cascading randomisation: " + "; ".join(text) + ".")
    return out


# -------------------------------------------------------------------------------------------- output
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _excludes_zero(triple: Sequence[float]) -> bool:
    return triple[1] > 0 or triple[2] < 0


def assessment(results: dict[str, Any]) -> list[str]:
    """Where the critique is right and where it is not, and which differences the 95% intervals separate from
    zero: sentences whose every number and every verdict is read from ``results`` (the page's first section)."""
    out = []
    if "scores" in results:
        r = results["scores"]
        official, faithful = r["cells"]["one head, model"], r["cells"]["model's heads, model"]
        accuracy = ("" if results.get("weights") == "random" else
                    f", and zero-shot accuracy goes from {_percent(r['own_accuracy'])} to "
                    f"{_percent(official['accuracy'])}")
        out.append(f"The critique is right that official mode's results are not the original model's: its one-head "
                   f"recomputation moves the model's cosines by {official['mean_abs_diff']:.4f} on average and by up "
                   f"to {official['max_abs_diff']:.4f}, the best prompt changes for "
                   f"{_percent(official['best_changed'])} of the images{accuracy}. Faithful mode (the package's default) explains the model's own forward "
                   f"(largest score difference {faithful['max_abs_diff']:.1e}).")
    if "equivalence" in results:
        e = results["equivalence"]
        cost = ""
        if "cost" in results:
            cost = (f"; here the attention route took {results['cost']['attention_over_grad_eclip']:.2f}x "
                    "Grad-ECLIP's time")
        out.append(f"The equivalence holds (largest difference {e['max_abs_diff']:.1e}), but it does not make "
                   "Grad-ECLIP incorrect: it is the chain rule through o_cls = sum_i A[cls,i] v_i, so Grad-ECLIP's "
                   "channel term is the attention-probability gradient and Grad-ECLIP is an attention-gradient method, "
                   f"computed from the values without keeping A{cost}.")
    if "faithfulness" in results:
        f = results["faithfulness"]
        paired = f["paired"].get("official - faithful", {})
        lower_better = {"deletion"}
        separated, not_separated = [], []
        for metric, triple in paired.items():
            if _excludes_zero(triple):
                worse = (triple[0] > 0) == (metric in lower_better)
                separated.append(f"{metric} {_interval(triple)} (official maps {'worse' if worse else 'better'})")
            else:
                not_separated.append(f"{metric} {_interval(triple)}")
        text = f"On {f['images']} images, official minus faithful maps, 95% bootstrap intervals per comparison "
        text += "(not corrected for the several comparisons): "
        text += ("the interval excludes zero for " + "; ".join(separated) if separated
                 else "no interval excludes zero")
        if not_separated:
            text += "; it does not for " + "; ".join(not_separated)
        out.append(text + ".")
    if "sensitivity" in results:
        per = results["sensitivity"]["per_baseline"]
        better = [f"{b} ({'faithful' if r['faithful_minus_official'][0] > 0 else 'official'} better)"
                  for b, r in per.items() if _excludes_zero(r["faithful_minus_official"])]
        others = [b for b, r in per.items() if not _excludes_zero(r["faithful_minus_official"])]
        text = (f"Sensitivity-n on {results['sensitivity']['images']} images, faithful minus official correlation: "
                "the interval excludes zero with the baseline(s) " + ", ".join(better) if better else
                f"Sensitivity-n on {results['sensitivity']['images']} images, faithful minus official correlation: "
                "no interval excludes zero")
        if better and others:
            text += ", not with " + ", ".join(others)
        out.append(text + ".")
    return out


def markdown(results: dict[str, Any], command: str = "") -> str:
    """The docs page: where the critique is right and where not, the findings and the tables of every part
    that ran; then, when ``results["random_model"]`` holds a random-weight run, its findings and tables."""
    m = results["model"]
    lines = ["# Is Grad-ECLIP faithful? The critique measured", "",
             "Cui and Fan (arXiv 2605.12952, 2026) claim that Grad-ECLIP is equivalent to an attention-gradient "
             "route and that its results are not those of the original model. This page measures both claims "
             f"on `{m['model']}` (weights: {m['pretrained']}, {m['device']}, {results['threads']} thread(s)), every "
             "part of the study"]
    random = results.get("random_model")
    if random:
        r = random["model"]
        lines[-1] += (f", and on `{r['model']}` with random weights ({_pixels(random)} input) what random weights "
                      "can show: the equivalence, the cost and the score shift of official mode")
    lines[-1] += (". Every number below comes from one run of the command at the end "
                  "(`gradeclip_utils/studies/critique.py`, notebook `08_critique`).")
    lines += ["", "## Where the critique is right, and where it is not", ""]
    lines += [f"- {c}" for c in assessment(results)]
    if random:
        lines += [f"- Random-weight `{random['model']['model']}`: {c[0].lower()}{c[1:]}" for c in assessment(random)]
    lines += ["", "## Findings", ""]
    lines += [f"- {c}" for c in claims(results)] + [""] + tables(results)
    if random:
        r = random["model"]
        lines += [f"## Random weights: `{r['model']}`", "",
                  f"`load_model({r['model']!r}, pretrained=None)` (weights drawn with seed {random['seed']}, "
                  f"{r['device']}, {random['threads']} thread(s)): {_pixels(random)} input, parts "
                  f"{', '.join(random['parts'])}, {random['seconds']:.0f} s. A model without trained weights has no "
                  "accuracy or localisation to explain, so the faithfulness, sensitivity-n and sanity parts are not "
                  "run, and its zero-shot top-1 (chance) is not reported. The size of official mode's score shift "
                  "here says nothing about its size on trained weights: it depends on how differently the heads "
                  "attend, and random weights are not trained to attend anywhere.", "", "### Findings", ""]
        lines += [f"- {c}" for c in claims(random)] + [""] + tables(random, level=3)
    if command:
        lines += ["## Regenerate", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def _pixels(results: dict[str, Any]) -> str:
    """The input size of the equivalence's square images, e.g. "224 x 224"."""
    height, width = results["equivalence"]["square_pixels"][-2:]
    return f"{height} x {width}"


def tables(results: dict[str, Any], level: int = 2) -> list[str]:
    """The markdown tables of every part that ran (lines), under headings of ``level``; top-1 accuracy only for
    trained weights."""
    lines: list[str] = []
    h = "#" * level
    trained = results.get("weights") != "random"
    if "equivalence" in results:
        lines += [f"{h} 1. The equivalence", ""]
        lines += _table(["mode", "spatial weight", "blocks", "largest abs. difference", "largest map value"],
                        [(r["mode"], r["spatial_weight"], r["layers"], f"{r['max_abs_diff']:.2e}", f"{r['scale']:.3g}")
                         for r in results["equivalence"]["rows"]]) + [""]
    if "cost" in results:
        c = results["cost"]
        lines += [f"{h} 2. The cost of each route", ""]
        lines += _table(["route", "median seconds"], [(k, f"{v:.4f}") for k, v in c["seconds"].items()]) + [""]
    if "scores" in results:
        r = results["scores"]
        own = f"; the model's own forward: top-1 {_percent(r['own_accuracy'])}" if trained else ""
        lines += [f"{h} 3. The model's own forward against the explained forward", "",
                  f"{r['images']} images x {r['classes']} prompts{own}.", ""]
        rows = [(v["heads"], v["resolution"], f"{v['mean_abs_diff']:.4f}", f"{v['max_abs_diff']:.4f}",
                 _percent(v["best_changed"]), *([_percent(v["accuracy"])] if trained else []))
                for v in r["cells"].values()]
        lines += _table(["heads", "input", "mean abs. score change", "largest", "best prompt changed"]
                        + (["top-1"] if trained else []), rows) + [""]
        if max(r["resolution_effect"].values()) == 0:
            lines += ["Native and model resolution give the same scores here: the pictures are already at the "
                      "model's input size.", ""]
    if "faithfulness" in results:
        f = results["faithfulness"]
        lines += [f"{h} 4. Faithfulness scored by the unmodified model", "",
                  "Deletion and insertion AUC of the target's cosine (project protocol), pointing game; mean [95% "
                  "interval].", ""]
        metrics = f["metrics"]
        lines += _table(["maps"] + metrics, [(n, *(_interval(v[k]) for k in metrics)) for n, v in f["means"].items()])
        lines += [""] + _table(["paired difference"] + metrics,
                               [(n, *(_interval(v[k]) for k in metrics)) for n, v in f["paired"].items()]) + [""]
    if "sensitivity" in results:
        s = results["sensitivity"]
        lines += [f"{h} 5. Sensitivity-n with declared baselines", ""]
        rows = [(b, mode, *(f"{x:.3f}" for x in r["mean_by_n"][mode]))
                for b, r in s["per_baseline"].items() for mode in MODES]
        lines += _table(["baseline", "mode"] + [f"n={n}" for n in s["sizes"]], rows) + [""]
    if "sanity" in results:
        lines += [f"{h} 6. Cascading randomisation", ""]
        stages = results["sanity"]["stages"]
        names = [row["stage"] for row in next(iter(stages.values()))]
        lines += _table(["mode"] + names, [(mode, *(f"{row['spearman']:.3f}" for row in rows))
                                           for mode, rows in stages.items()]) + [""]
    return lines


def plot_heads(per_head: dict[str, Any]):
    """The per-head terms of ``per_head_terms`` on the patch grid, their sum and its ReLU (one colour scale
    for the heads and the sum, red positive, blue negative)."""
    from matplotlib import pyplot as plt

    terms = np.asarray(per_head["terms"])
    total = np.asarray(per_head["sum"])
    panels = [(f"head {h}", terms[h]) for h in range(len(terms))] + [("sum over heads", total),
                                                                      ("ReLU(sum) = Grad-ECLIP", np.maximum(total, 0))]
    scale = float(max(np.abs(terms).max(), np.abs(total).max(), 1e-12))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.7 * len(panels), 2.1), layout="constrained", squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        image = ax.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"block {per_head['block']}: lambda_i dS/dA^h[cls, i] per head", fontsize=9)
    return fig


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``gradeclip critique`` on its parsed arguments (the options are declared in ``cli.py``): the study on
    ``--model``, then the random-weight run on ``--random-model`` unless it is "none"; writes OUT/results.json and,
    with ``--doc``, the page, whose last section is the command line (``parser.prog`` and ``argv``, the command's
    own arguments). Returns the results."""
    model = load_model(args.model, pretrained=args.pretrained, device=args.device)
    tune_threads(model)
    results = run_study(model, parts=args.parts, quick=args.quick, imagenet=args.imagenet, images=args.images,
                        zero_shot=args.zero_shot, seed=args.seed)
    if args.random_model.lower() != "none":
        results["random_model"] = random_weight_study(args.random_model, device=args.device,
                                                      zero_shot=args.random_zero_shot, repeats=2 if args.quick else 5,
                                                      seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    command = " ".join([parser.prog, *(sys.argv[1:] if argv is None else argv)])
    text = markdown(results, command=command)
    if args.doc:
        Path(args.doc).write_text(text)
    print(text)
    return results


if __name__ == "__main__":  # the `gradeclip critique` alias (cli.py declares its options)
    from ..cli import alias

    sys.exit(alias("critique"))
