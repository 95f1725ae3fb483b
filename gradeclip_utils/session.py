"""Running a method on a model safely: the one place that enters and leaves a model for an explanation.

``explaining(model)`` (``guard.py``, re-exported here) holds the model's lock and the state an explanation
needs, restored exactly after; ``run_image_method`` / ``run_text_method`` run one method on one batch under it, refuse a method the
model's family cannot run (from the method's and the adapter's declarations), and return the result
detached, float32, on the CPU and checked to be finite. ``explain_image``, ``explain_text``, the
evaluation, the dataset job and the benchmarks all run methods through these.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .adapters import UnsupportedMethodError
from .budget import grid_of, image_plan, resolve_budget
from .config import ExplainConfig
from .guard import explaining, model_lock, release_frames
from .methods.outputs import MapOutput, TokenOutput
from .methods.registry import MethodSpec, get_image_method, get_spec, get_text_method, refusal
from .methods.scores import explained_score, relative_score

def check_supported(model: Any, spec: MethodSpec, tower: str = "image") -> None:
    """``UnsupportedMethodError`` naming method, family and reason when the model's tower lacks what the
    method requires (``methods.refusal``: from the two declarations, before any work)."""
    reason = refusal(spec, model.adapter, tower)
    if reason is not None:
        raise UnsupportedMethodError(reason)


def _call(model: Any, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a method; a refusal the method meets while it runs, and a half-precision model on the CPU
    that hits a missing kernel, get a clear error naming what is missing."""
    try:
        return fn(*args, **kwargs)
    except UnsupportedMethodError as error:
        raise UnsupportedMethodError(f"{method} is not available for {model.family} models: {error}") from None
    except RuntimeError as error:
        if model.adapter.dtype == torch.float16 and model.device.type == "cpu" and "Half" in str(error):
            raise RuntimeError(
                f"{method} failed on a half-precision (fp16) model on the CPU, where this torch build lacks a "
                f"kernel ({error}). Convert the model with model.float() (or .bfloat16()), or run it on a CUDA "
                "device.") from error
        raise


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _weights_hint(inputs: Sequence[str] | None) -> str:
    where = f" for {list(inputs)}" if inputs is not None else ""
    return f"{where} (are the model's weights finite?)"


def run_image_method(model: Any, config: ExplainConfig, pixels: torch.Tensor, targets: torch.Tensor, *,
                     spec: MethodSpec | None = None, inputs: Sequence[str] | None = None,
                     columns: Sequence[int] | None = None, image_chunk: int | None = None) -> MapOutput:
    """Run the image method ``config.method`` on one batch: raw maps (B, K, h, w) and scores (B, K),
    detached, float32, on the CPU.

    ``model`` is a LoadedModel; ``pixels`` (B, 3, H, W) on one grid and ``targets`` (T, D) unit text
    embeddings go to its device; the method gets ``config``'s layers (resolved for the model), mode, qk,
    score (resolved for the model: ``methods.scores.explained_score``; T = K target rows, or 2K for the
    contrast's pairs) and options. It runs under ``explaining`` (taken here; a caller may hold it around
    several batches). A method the model's family cannot run is an ``UnsupportedMethodError`` naming
    method, family and reason; a half-precision model on the CPU without a kernel a RuntimeError saying
    what to do; maps or scores that are not finite a FloatingPointError (``inputs`` name the images in its
    message). When it raises, the failed call's frames are released (``release_frames``). ``spec``: the
    declaration of a method that is not registered (the evaluation's random reference); a registered one
    is looked up.

    ``columns``: map only these of the K explained scores (in this order, repeats allowed): maps (B, len,
    h, w) and scores (B, len), those columns of the call against every target, at the cost of these only.
    The probability's softmax still runs over every target row (``ExplainedScore.columns``: a few classes'
    probabilities among a whole classifier); every other score of a column depends on its own rows only,
    which are then all the method is given.

    Memory: the batch runs in chunks whose estimated peak fits ``config.memory_budget`` bytes (None: the
    default budget of the model's device; ``budget.image_plan`` from the method's declared cost for the K
    explained scores, or the ``columns``): at most ``image_chunk`` images (the caller's cap, default the
    batch) per call of the method, and the method's own inner chunk (its option, e.g. GAME's ``chunk``,
    lowered to what fits, never raised). Images are independent and every chunk gets every target row, so
    the chunks give the whole batch's maps, the probability's softmax included (a paired method's explained
    scores and a keyed method's keys are cut with its images; the paired probability stays among all the
    batch's targets). A budget below one image with one unit is a ValueError before the method runs.
    """
    fn = spec.image if spec is not None else get_image_method(config.method)
    spec = spec if spec is not None else get_spec(config.method)
    pixels = pixels.to(model.device)
    paired = spec.paired and bool(config.options.get("paired"))
    count = len(columns) if columns is not None else max(1, targets.shape[0] // _rows(config))
    config, size = _chunks(model, config, spec, pixels, 1 if paired else count, image_chunk)
    if size >= pixels.shape[0]:
        return _explained(model, config, spec, fn, pixels, targets, inputs, columns)
    parts = []
    for lo in range(0, pixels.shape[0], size):
        hi = lo + size
        options = dict(config.options)
        if spec.keyed and "keys" in options:  # a keyed method's keys name its images
            options["keys"] = list(options["keys"])[lo:hi]
        names = None if inputs is None else list(inputs)[lo:hi]
        # a paired call's explained scores are its images': each chunk keeps its own, among every target row
        part = list(range(count) if columns is None else columns)[lo:hi] if paired else columns
        parts.append(_explained(model, config.with_options(options), spec, fn, pixels[lo:hi], targets, names, part))
    return MapOutput(maps=torch.cat([p.maps for p in parts]), scores=torch.cat([p.scores for p in parts]))


def _rows(config: ExplainConfig) -> int:
    """The target rows of one explained score: two for the contrast's pairs, else one."""
    return 2 if config.score == "contrast" else 1


def _explained(model: Any, config: ExplainConfig, spec: MethodSpec, fn: Callable[..., Any], pixels: torch.Tensor,
               targets: torch.Tensor, inputs: Sequence[str] | None, columns: Sequence[int] | None) -> MapOutput:
    """One call of the image method on ``pixels`` (on the model's device), its ``columns`` of the explained
    scores: the probability's (of a method that takes the score) among every target row, any other score's
    from its own rows only."""
    if columns is not None and not (relative_score(config.score, model.adapter) and "score" in spec.uses):
        rows = _rows(config)
        targets, columns = targets[[c * rows + r for c in columns for r in range(rows)]], None
    maps, scores = _run(model, config, spec, "image", fn, pixels, targets, "maps", inputs, columns=columns)
    return MapOutput(maps=maps, scores=scores)


def _chunks(model: Any, config: ExplainConfig, spec: MethodSpec, pixels: torch.Tensor, count: int,
            image_chunk: int | None) -> tuple[ExplainConfig, int]:
    """``config`` with the method's inner chunk planned, and the images per call, from its memory budget."""
    adapter = model.adapter
    batch = pixels.shape[0]
    budget = resolve_budget(config.memory_budget, model.device)
    plan = image_plan(adapter, spec, grid_of(adapter, pixels.shape), count, config.options,
                      adapter.resolve_layers(config.layers, "image"), budget, min(batch, image_chunk or batch))
    return (config.with_options({**config.options, **plan.options}) if plan.options else config), plan.images


def run_text_method(model: Any, config: ExplainConfig, tokens: torch.Tensor, targets: torch.Tensor, *,
                    spec: MethodSpec | None = None, rest: torch.Tensor | None = None) -> TokenOutput:
    """Run the text method ``config.method`` on K texts' ``tokens`` against B unit image embeddings
    ``targets``: relevance (B, K, L) and scores (B, K), detached, float32, on the CPU. As
    ``run_image_method`` (the layers are the text tower's). ``rest`` (K, B): for the probability, the
    log-sum-exp of the logits of the captions not among these K for each image (``explain_text``'s other
    chunks; ``methods.scores.ExplainedScore``), so that the softmax runs over all the captions given."""
    fn = spec.text if spec is not None else get_text_method(config.method)
    spec = spec if spec is not None else get_spec(config.method)
    relevance, scores = _run(model, config, spec, "text", fn, tokens, targets, "relevance", None, rest)
    return TokenOutput(relevance=relevance, scores=scores)


def _run(model: Any, config: ExplainConfig, spec: MethodSpec, tower: str, fn: Callable[..., Any],
         inputs_on_device: torch.Tensor, targets: torch.Tensor, what: str,
         inputs: Sequence[str] | None, rest: torch.Tensor | None = None,
         columns: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame both runners share: the declarations checked, the method called under ``explaining`` with
    ``config``'s settings for ``tower`` (the score resolved for the model), its ``what`` (maps or relevance)
    and scores detached, float32, on the CPU and checked to be finite; the failed call's frames released
    when it raises."""
    config.check_uses(spec, tower)  # a setting the method would not apply is refused (a registered one: when made)
    check_supported(model, spec, tower)
    adapter = model.adapter
    score = explained_score(config.score, adapter, None if rest is None else rest.to(model.device), columns)
    try:
        with explaining(model.model):
            out = _call(model, config.method, fn, adapter, inputs_on_device, targets.to(model.device),
                        layers=adapter.resolve_layers(config.layers, tower), mode=config.mode, qk=config.qk,
                        score=score, **config.options)
            values, scores = getattr(out, what).detach().float().cpu(), out.scores.detach().float().cpu()
            del out
    except BaseException as error:
        release_frames(error)
        raise
    if not _finite(values, scores):
        raise FloatingPointError(f"{config.method} produced non-finite {what} or scores{_weights_hint(inputs)}")
    return values, scores


__all__ = ["check_supported", "explaining", "model_lock", "release_frames",
           "run_image_method", "run_text_method"]
