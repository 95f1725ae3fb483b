"""Deletion and insertion under the two protocols, and the columns they write.

``project``: this project's curves on the model's preprocessed pixels, ties ordered by seeded random
permutations repeated over several tie seeds (``project_faithfulness``). ``authors``: the Grad-ECLIP
authors' scripts exactly, on each native picture, explaining what their scripts explain (``AuthorsTargets``,
``authors_faithfulness``), as each method's ``MethodSpec.authors`` declares (no method is named here).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np
import torch

from ..inputs import prepare_images
from ..methods.scores import DEFAULT_SCORE
from ..metrics import authors_heatmap, authors_perturbation_curves, perturbation_curves_over_ties, shrink_to_640
from ..prompts import encode_texts, zero_shot_classifier
from . import methods as method_calls  # called through the module: replacing one replaces it in every phase
from .datasets import EvalItem
from .methods import item_seed, method_spec

MEASURES = ("score", "accuracy", "probability")
TIE_MEASURES = ("score", "accuracy")  # the AUCs recomputed for every further tie seed
LOCALISATION = ("pointing", "pointing_strict", "energy", "iou", "area_share")
STEPS = 11  # the scored points of each curve
#: the curves' measure that is each explained score of the ground-truth class: its cosine ("score"), its
#: logit (the logit scale x "score") and its probability among every class of the classifier
EXPLAINED = {"cosine": "score", "logit": "logit", "probability": "probability"}


def measures_of(score: str = DEFAULT_SCORE) -> tuple[str, ...]:
    """The curves' measures of a run explaining ``score``: ``MEASURES``, then the explained score's own where it
    is not one of them (the logit)."""
    return MEASURES + tuple(m for m in (EXPLAINED[score],) if m not in MEASURES)


def _curve_columns(steps: int, measures: Sequence[str] = MEASURES) -> list[str]:
    return [f"{kind}_{measure}_{t:02d}" for kind in ("deletion", "insertion") for measure in measures
            for t in range(steps)]


def per_image_columns(*, localise: bool, faithfulness: bool, tie_seeds: int, steps: int = STEPS,
                      score: str = DEFAULT_SCORE) -> list[str]:
    """The columns of ``per_image.csv``: the item and method, the localisation scores (``localise``), and
    with ``faithfulness`` the AUCs, the curves' points (of ``measures_of(score)``) and each further tie seed's
    AUCs."""
    columns = ["key", "label", "target", "prompt", "method"] + (list(LOCALISATION) if localise else [])
    if faithfulness:
        measures = measures_of(score)
        columns += [f"{kind}_auc_{m}" for kind in ("deletion", "insertion") for m in measures]
        columns += _curve_columns(steps, measures)
        columns += [f"{kind}_auc_{m}_tie{t}" for t in range(1, tie_seeds) for kind in ("deletion", "insertion")
                    for m in TIE_MEASURES]
    return columns


def tie_seeds_of(seed: int, key: str, count: int) -> list[int]:
    """The tie seeds of one item: the first is the one the main AUC uses; all are shared by every method."""
    return [item_seed(seed + 7919 * (t + 1), key) for t in range(count)]


def _curve_row(row: dict[str, Any], curves, steps: int, suffix: str = "", measures: Sequence[str] = MEASURES,
               b: int = 0, with_points: bool = True) -> None:
    """Write one image's AUCs (and curve points) of ``curves`` into ``row``."""
    for kind in ("deletion", "insertion"):
        for measure in measures:
            row[f"{kind}_auc_{measure}{suffix}"] = float(curves.auc(kind, measure)[b])
            if with_points:
                values = getattr(curves, kind)[measure]
                for t in range(steps):
                    row[f"{kind}_{measure}_{t:02d}"] = float(values[b, t])


def project_faithfulness(model, pixels: torch.Tensor, maps: torch.Tensor, batch: Sequence[EvalItem],
                         classifier: torch.Tensor, rows: list[dict[str, Any]], *, seed: int, tie_seeds: int,
                         logit_scale: float, steps: int, score: str = DEFAULT_SCORE, batch_size: int = 128) -> None:
    """The project's deletion and insertion (preprocessed pixels, one random picture per image, ties by
    seeded permutations) for a batch, once per tie seed (pictures two tie orders make alike encoded once);
    the first tie seed gives the main columns, with the curves of the explained ``score`` (``measures_of``:
    the logit's is ``logit_scale`` x the cosine's). ``batch_size``: perturbed pictures per forward."""
    mean, std = model.normalization
    keys = [item.key for item in batch]
    per_tie = perturbation_curves_over_ties(
        model.adapter, pixels.to(model.device), maps, classifier, [item.label for item in batch], mean=mean, std=std,
        seed=[item_seed(seed, key) for key in keys], logit_scale=logit_scale, ties="random", batch_size=batch_size,
        tie_seeds=[[tie_seeds_of(seed, key, tie_seeds)[t] for key in keys] for t in range(tie_seeds)])
    measures = measures_of(score)
    for t, curves in enumerate(per_tie):
        if "logit" in measures:
            for kind in ("deletion", "insertion"):
                getattr(curves, kind)["logit"] = logit_scale * getattr(curves, kind)["score"]
        for b, row in enumerate(rows):
            if t == 0:
                _curve_row(row, curves, steps, b=b, measures=measures)
            else:
                _curve_row(row, curves, steps, suffix=f"_tie{t}", measures=TIE_MEASURES, b=b, with_points=False)


def authors_maps(model, name: str, item: EvalItem, picture, classifier: torch.Tensor,
                 options: dict[str, Any]) -> np.ndarray:
    """One item's heat map as the authors' ``generate_hm`` makes it: the method at native resolution (or,
    where their scripts do, on the model's centre crop: ``AuthorsProtocol.resolution``), min-max normalised,
    resized to the picture (through the model's input size where the method's own code upsamples)."""
    spec = method_spec(name)
    # the authors explain the (640-shrunk) picture at its full native size: no patch cap
    pixels = prepare_images(model, picture, spec.authors.resolution, max_patches=sys.maxsize)[0].pixels[None]
    extra = {"keys": [item.key]} if spec.keyed else {}
    grid_map = method_calls.batch_maps(model, name, pixels, [item.explained], classifier, {**options, **extra})[0]
    via = tuple(model.adapter.image_size) if spec.authors.upsampled else None
    return authors_heatmap(grid_map, (picture.size[1], picture.size[0]), via=via)


def authors_picture(item: EvalItem):
    """The native picture the authors' scripts perturb: shrunk to a 640 short side when larger."""
    if item.picture is None:
        raise ValueError(f"--protocol authors needs the native pictures; {item.key} has none")
    return shrink_to_640(item.picture())


class AuthorsTargets:
    """What the authors' scripts explain each image against (``AuthorsProtocol``): the zero-shot
    classifier's row, or the class name, bare or embedded with a method's prompt ensemble (CLIP Surgery's
    ``encode_text_with_prompt_ensemble``); a method with a class set gets it after the target, embedded
    the same way."""

    def __init__(self, model, class_names: Sequence[str], methods: Sequence[str]) -> None:

        def embed(names: Sequence[str], templates: tuple[str, ...]) -> torch.Tensor:
            if templates:
                return zero_shot_classifier(model, list(names), templates, progress=False)
            return encode_texts(model, list(names))

        # the class names by the templates they are embedded with; the class sets by (names, templates)
        self.tables: dict[tuple[str, ...], torch.Tensor] = {}
        self.sets: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}
        for name in methods:
            authors = method_spec(name).authors
            if authors.target == "class_name" and authors.templates not in self.tables:
                self.tables[authors.templates] = embed(class_names, authors.templates)
            if authors.class_set and (authors.class_set, authors.templates) not in self.sets:
                self.sets[authors.class_set, authors.templates] = embed(authors.class_set, authors.templates)

    def of(self, name: str, item: EvalItem, classifier: torch.Tensor,
           options: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the (C, D) table whose row ``item.explained`` is explained, the options) of one method and item."""
        spec = method_spec(name)
        authors = spec.authors
        table = self.tables[authors.templates] if authors.target == "class_name" else classifier
        if authors.class_set:
            own = table[item.explained][None]
            options = {**options, spec.class_set: torch.cat([own, self.sets[authors.class_set, authors.templates]])}
        return table, options


def authors_faithfulness(model, name: str, item: EvalItem, picture, classifier: torch.Tensor, row: dict[str, Any],
                         options: dict[str, Any], *, seed: int, logit_scale: float, steps: int,
                         targets: AuthorsTargets | None = None, batch_size: int = 128) -> None:
    """The Grad-ECLIP authors' deletion and insertion for one item (see ``authors_perturbation_curves``),
    on its ``authors_picture``: the map explains what their scripts explain (``targets``, default the
    classifier's row); the curves score the classifier's classes, ``batch_size`` pictures per forward."""
    table, map_options = (classifier, options) if targets is None else targets.of(name, item, classifier, options)
    heatmap = authors_maps(model, name, item, picture, table, map_options)
    curves = authors_perturbation_curves(model.adapter.encode_image, lambda p: model.preprocess(p).float(), picture,
                                         heatmap, classifier.to(model.device), item.label,
                                         seed=item_seed(seed, item.key), ties="numpy", logit_scale=logit_scale,
                                         batch_size=batch_size)
    _curve_row(row, curves, steps)


def curve_fractions(protocol: str) -> dict[str, list[float]]:
    """Where the 11 scored points of each curve lie (share of the pixels changed): 0% ... 50% for both
    curves in the project's protocol; under the authors' protocol insertion is scored at 5% ... 50% and
    on the full picture."""
    points = [round(0.05 * t, 2) for t in range(11)]
    return {"deletion": points, "insertion": points[1:] + [1.0] if protocol == "authors" else points}

