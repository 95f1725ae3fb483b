"""Parts 1-3 of the critique study (:mod:`.critique`): the two routes to Grad-ECLIP's channel term, and the
model's own forward against the explained one.

- ``equivalence``: Grad-ECLIP's maps (``grad_eclip_maps``) against ReLU(lambda_i sum_h dS/dA^h[cls, i]) by
  autograd on the attention probabilities (``attention_gradients``, ``attention_route_maps``); ``per_head_terms``
  gives the heads' terms of one block.
- ``route_cost``: the two routes timed side by side, and the model's own forward against one that keeps A.
- ``score_shift``: the model's own scores against those of the explained forward (heads x input size), on
  ``synthetic_zero_shot`` scenes or any labelled pictures.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..explain import explain_image
from ..guard import explaining
from ..methods import get_image_method
from ..prompts import encode_texts
from ..synthetic.captions import class_prompts
from ..synthetic.dataset import HELDOUT_SEED_START
from ..synthetic.evaluate import OFFSETS
from ..synthetic.scenes import generate_scene

MODES: tuple[str, ...] = ("official", "faithful")


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
