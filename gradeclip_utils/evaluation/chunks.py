"""The chunks of an evaluation run, planned from its memory budget before any work.

Each (batch, method) call cuts its images into chunks whose estimated peak fits the budget, with the method's
own inner chunk (GAME's targets per backward pass, M2IB's noise samples, RISE's masks per forward:
``budget.image_plan``), and deletion and insertion forward their perturbed pictures in chunks
(``budget.curves_cost``). The sizes are planned once, at the model's input size (every picture of the
project's protocol has it), for a call of ``batch_size`` images against as many distinct targets as it can
hold, for every method the model's family can run by its declarations (whichever a run asks for, so that a
run resumed with other methods keeps its record), and recorded in ``config.json`` as ``"chunks"``:
``{"curves": 128, "grad_eclip": {"images": 16}, "game": {"images": 4, "chunk": 16}, ...}``. Every call gets
them, so a run with the same record repeats the same chunks; ``EvalConfig.chunks`` takes such a record as
the most each chunk may be (a resumed run takes its own record), and the budget can only lower them. Under
the authors' protocol the maps are made at each picture's own size: the runner plans each call again with
the run's budget, and a picture larger than the model's input may get smaller inner chunks than recorded.

The budget is the least of the ranks' (each its device's default unless ``memory_budget`` is given), so
that every rank cuts alike. A budget below one image with one unit of some method (or one perturbed
picture) is a ValueError naming it and the bytes it needs, before any work.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..budget import curves_cost, grid_of, image_plan, plan, resolve_budget
from .methods import method_spec

CURVES = "curves"
IMAGES = "images"
#: perturbed pictures per forward at most (``perturbation_curves``' default batch)
CURVE_PICTURES = 128
#: a budget nothing reaches: the chunks as large as their bounds allow
UNBOUNDED = 2 ** 62


def run_budget(model: Any, memory_budget: int | None, context: Any) -> int:
    """The run's budget in bytes: ``memory_budget``, or this device's default, the least over the ranks."""
    return min(context.gather(resolve_budget(memory_budget, model.device)))


def plan_chunks(model: Any, config: Any, options: Mapping[str, Mapping[str, Any]], methods: Sequence[str], *,
                classes: int, budget: int, bounds: Mapping[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    """The chunks of a run (``config``: its ``EvalConfig``) for ``methods`` with their ``options``: deletion
    and insertion's pictures per forward (when run), and per method the images per call (at most the batch
    size) and its inner chunk, each at most its ``bounds`` entry. A method of ``required`` (those the run
    runs) that cannot fit one image is the ValueError of ``budget.plan``; another one is left out. A stand-in
    model without an image tower to estimate gets an empty plan (its calls are not cut)."""
    adapter = model.adapter
    if getattr(adapter, "image", None) is None:
        return {}
    grid = grid_of(adapter, adapter.image_size)
    unit = config.batch_size
    chunks: dict[str, Any] = {}
    if config.faithfulness:
        limit = int(bounds.get(CURVES, CURVE_PICTURES))
        cost = curves_cost(adapter, grid, unit if config.protocol == "project" else 1, config.tie_seeds, limit)
        chunks[CURVES] = plan(cost, budget, 1, what="deletion and insertion").options["batch_size"]
    # distinct targets of one call: of a batch, or of the sanity check's images
    count = min(max(unit, config.sanity_images), classes)
    layers = adapter.resolve_layers((-1,), "image")  # the evaluation explains the last block
    for name in methods:
        spec = method_spec(name)
        bound = dict(bounds.get(name, {}))
        call = {**options[name], **{k: v for k, v in bound.items() if k != IMAGES}}
        if spec.paired:  # one target per image (``batch_maps``)
            call["paired"] = True
        try:
            planned = image_plan(adapter, spec, grid, 1 if spec.paired else count, call, layers, budget,
                                 min(unit, int(bound.get(IMAGES, unit))))
        except ValueError:
            if name in required:
                raise
            continue
        chunks[name] = {IMAGES: planned.images, **planned.options}
    return chunks


def call_options(options: Mapping[str, Any], chunks: Mapping[str, Any], name: str, budget: int) -> dict[str, Any]:
    """A method's options for a call of the run: its own with its inner chunk, and the budget and the images
    per call for the runner (``methods.run_method`` takes those two out)."""
    sizes = chunks.get(name, {})
    inner = {k: v for k, v in sizes.items() if k != IMAGES}
    return {**options, **inner, "memory_budget": budget, **({"image_chunk": sizes[IMAGES]} if IMAGES in sizes else {})}


__all__ = ["CURVES", "CURVE_PICTURES", "IMAGES", "UNBOUNDED", "call_options", "plan_chunks", "run_budget"]
