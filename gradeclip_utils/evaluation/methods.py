"""Which methods an evaluation runs, with which options, and their maps.

The methods are the registered image methods (``methods.method_specs``) and the evaluation's own reference,
``random`` (``RANDOM_SPEC``: a map that explains nothing, the floor every method must beat). Each method's
options come from the run's settings as its ``MethodSpec`` declares (``run_options``; under the authors'
protocol also ``authors.options``): no method is named here. The evaluation's phases call the functions of
this module through it (``methods.run_method``), so that replacing one replaces it for every phase.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Sequence

import torch

from ..config import ExplainConfig
from ..explain import method_support
from ..methods import MapOutput, MethodSpec, get_spec, method_specs
from ..methods.scores import DEFAULT_SCORE, SCORES, own_scores
from ..session import run_image_method

RANDOM = "random"


def item_seed(seed: int, key: str) -> int:
    """A seed for one item: the same whatever batch or order the item comes in."""
    return seed * 1_000_003 + zlib.crc32(key.encode())


def random_maps(adapter, pixels: torch.Tensor, targets: torch.Tensor, *, seed: int = 0, keys: Sequence[str] = (),
                **_: Any) -> MapOutput:
    """A reference that explains nothing: uniform noise on the patch grid, seeded by the item key, the
    same for every target (so an item's map does not depend on the batch or the other targets)."""
    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    maps = []
    for b in range(pixels.shape[0]):
        key = keys[b] if b < len(keys) else str(b)
        generator = torch.Generator().manual_seed(item_seed(seed, key))
        maps.append(torch.rand(*grid, generator=generator).expand(targets.shape[0], *grid))
    with torch.no_grad():  # the model's own scores: the cosines of a CLIP, the logits of a classifier
        scores = own_scores(adapter, adapter.encode_image(pixels), targets)
    return MapOutput(maps=torch.stack(maps).to(pixels.device), scores=scores)


RANDOM_SPEC = MethodSpec(name=RANDOM, image=random_maps, run_options={"seed": "seed"}, shown=False, reference=True,
                         keyed=True)
"""The evaluation's own reference, a map that explains nothing (not a method of the package: not registered)."""
_REFERENCES = {RANDOM_SPEC.name: RANDOM_SPEC}


def method_spec(name: str) -> MethodSpec:
    """The spec of a method the evaluation runs: a registered method or the evaluation's random reference."""
    return _REFERENCES[name] if name in _REFERENCES else get_spec(name)


def default_methods() -> list[str]:
    """Every registered image method that explains one of a CLIP's scores (``SCORES``: not the matching head's
    Grad-CAM, whose score takes captions, not the classes' embeddings the evaluation explains), in the order
    they were registered, then the random reference."""
    return [spec.name for spec in method_specs() if spec.image is not None
            and any(spec.explains(score) for score in SCORES)] + list(_REFERENCES)


DEFAULT_METHODS: tuple[str, ...] = tuple(default_methods())
"""The methods registered when the package was imported, then the random reference (``default_methods()``
gives the current list: what ``evaluate`` runs by default)."""


def method_options(name: str, config: Mapping[str, Any], classifier: torch.Tensor) -> dict[str, Any]:
    """The evaluation's settings for each method (documented in the summary): the options it takes from
    the run's settings ``config`` (``MethodSpec.run_options``: names of ``EvalConfig``'s fields, as
    ``config.json`` records them), the classifier as its class set, and under the authors' protocol the
    options of their scripts (``MethodSpec.authors``)."""
    spec = method_spec(name)
    options = spec.options_from(config, classes=classifier)
    if config.get("protocol") == "authors":
        options = {**options, **spec.authors.options}
    if config.get("score", DEFAULT_SCORE) != DEFAULT_SCORE and not spec.reference:  # the random floor has none
        options = {**options, "score": config["score"]}
    return options


def run_method(model, name: str, pixels: torch.Tensor, targets: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """Raw maps (B, K, h, w) of one method on the CPU, as ``explain_image`` runs methods (the last block;
    ``options`` may set ``mode``, ``qk`` and ``score``, default faithful, raw and the cosine, and ``columns``:
    only these of the K explained scores, ``session.run_image_method``'s; for the runner the run's
    ``memory_budget`` and the images per call, ``image_chunk``: see ``chunks.py``)."""
    options = dict(options)
    columns = options.pop("columns", None)
    image_chunk = options.pop("image_chunk", None)
    config = ExplainConfig(method=name, mode=options.pop("mode", "faithful"), qk=options.pop("qk", "raw"),
                           score=options.pop("score", DEFAULT_SCORE), memory_budget=options.pop("memory_budget", None),
                           options=options)
    spec = _REFERENCES.get(name)  # registered methods are looked up by the runner
    return run_image_method(model, config, pixels, targets, spec=spec, columns=columns, image_chunk=image_chunk).maps


def score_refusal(name: str, score: str) -> str | None:
    """Why method ``name`` cannot explain ``score`` (its spec's declarations; None when it can)."""
    spec = method_spec(name)
    return spec.unused_setting("score", score) or spec.unsupported_score(score)


def unsupported_methods(model, options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The methods of ``options`` (name -> the evaluation's options) that the model's family cannot run, or
    that cannot explain the run's score, each with the reason naming the method (``score_refusal``, then
    ``explain.method_support`` with these options)."""
    reasons = {}
    for name, method_opts in options.items():
        if method_spec(name).reference:
            continue
        method_opts = dict(method_opts)
        score = method_opts.pop("score", DEFAULT_SCORE)
        reasons[name] = score_refusal(name, score) or method_support(model, name, **method_opts)
    return {name: reason for name, reason in reasons.items() if reason is not None}


def explained_targets(classifier: torch.Tensor, rows: Sequence[int], options: dict[str, Any]
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The targets and options of ``run_method`` that explain the classifier's ``rows`` with ``options``' score:
    those rows; for the probability the whole classifier, with the rows as the maps' ``columns``, so that the
    softmax runs over every class (the zero-shot class probability), not over the rows a batch explains."""
    if options.get("score", DEFAULT_SCORE) == "probability":
        return classifier, {**options, "columns": list(rows)}
    return classifier[list(rows)], options


def batch_maps(model, name: str, pixels: torch.Tensor, labels: Sequence[int], classifier: torch.Tensor,
               options: dict[str, Any]) -> torch.Tensor:
    """Each image's map (B, h, w) for its own target ``labels[b]`` (a row of ``classifier``).

    One call explains the batch against its distinct targets and keeps each image's own; methods with a
    paired mode (``MethodSpec.paired``) explain image b against target b only (``paired=True``). The
    probability is each image's class's among every class of ``classifier`` (``explained_targets``).
    """
    if method_spec(name).paired:
        targets, options = explained_targets(classifier, labels, options)
        return run_method(model, name, pixels, targets, {**options, "paired": True})[:, 0]
    distinct = sorted(set(labels))
    column = [distinct.index(label) for label in labels]
    targets, options = explained_targets(classifier, distinct, options)
    maps = run_method(model, name, pixels, targets, options)
    return maps[torch.arange(len(labels)), torch.tensor(column)]

