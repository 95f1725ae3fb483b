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
                     image_chunk: int | None = None) -> MapOutput:
    """Run the image method ``config.method`` on one batch: raw maps (B, K, h, w) and scores (B, K),
    detached, float32, on the CPU.

    Memory: the batch runs in chunks whose estimated peak fits ``config.memory_budget`` bytes (None: the
    default budget of the model's device; ``budget.image_plan`` from the method's declared cost): at most
    ``image_chunk`` images (the caller's cap, default the batch) per call of the method, and the method's
    own inner chunk (its option, e.g. GAME's ``chunk``, lowered to what fits, never raised). Images are
    independent, so the chunks give the whole batch's maps (a paired method's targets and a keyed method's
    keys are cut with its images). A budget below one image with one unit is a ValueError before the method
    runs.

    ``model`` is a LoadedModel; ``pixels`` (B, 3, H, W) on one grid and ``targets`` (K, D) unit text
    embeddings go to its device; the method gets ``config``'s layers (resolved for the model), mode, qk
    and options. It runs under ``explaining`` (taken here; a caller may hold it around several batches).
    A method the model's family cannot run is an ``UnsupportedMethodError`` naming method, family and
    reason; a half-precision model on the CPU without a kernel a RuntimeError saying what to do; maps or
    scores that are not finite a FloatingPointError (``inputs`` name the images in its message). When it
    raises, the failed call's frames are released (``release_frames``). ``spec``: the declaration of a
    method that is not registered (the evaluation's random reference); a registered one is looked up.
    """
    fn = spec.image if spec is not None else get_image_method(config.method)
    spec = spec if spec is not None else get_spec(config.method)
    pixels = pixels.to(model.device)
    paired = spec.paired and bool(config.options.get("paired"))
    config, size = _chunks(model, config, spec, pixels, 1 if paired else targets.shape[0], image_chunk)
    if size >= pixels.shape[0]:
        maps, scores = _run(model, config, spec, "image", fn, pixels, targets, "maps", inputs)
        return MapOutput(maps=maps, scores=scores)
    parts = []
    for lo in range(0, pixels.shape[0], size):
        hi = lo + size
        options = dict(config.options)
        if spec.keyed and "keys" in options:  # a keyed method's keys name its images
            options["keys"] = list(options["keys"])[lo:hi]
        names = None if inputs is None else list(inputs)[lo:hi]
        parts.append(_run(model, config.with_options(options), spec, "image", fn, pixels[lo:hi],
                          targets[lo:hi] if paired else targets, "maps", names))
    return MapOutput(maps=torch.cat([m for m, _ in parts]), scores=torch.cat([s for _, s in parts]))


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
                    spec: MethodSpec | None = None) -> TokenOutput:
    """Run the text method ``config.method`` on K texts' ``tokens`` against B unit image embeddings
    ``targets``: relevance (B, K, L) and scores (B, K), detached, float32, on the CPU. As
    ``run_image_method`` (the layers are the text tower's)."""
    fn = spec.text if spec is not None else get_text_method(config.method)
    spec = spec if spec is not None else get_spec(config.method)
    relevance, scores = _run(model, config, spec, "text", fn, tokens, targets, "relevance", None)
    return TokenOutput(relevance=relevance, scores=scores)


def _run(model: Any, config: ExplainConfig, spec: MethodSpec, tower: str, fn: Callable[..., Any],
         inputs_on_device: torch.Tensor, targets: torch.Tensor, what: str,
         inputs: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame both runners share: the declarations checked, the method called under ``explaining`` with
    ``config``'s settings for ``tower``, its ``what`` (maps or relevance) and scores detached, float32, on the
    CPU and checked to be finite; the failed call's frames released when it raises."""
    config.check_uses(spec)  # a setting the method would not apply is refused (a registered one: when made)
    check_supported(model, spec, tower)
    adapter = model.adapter
    try:
        with explaining(model.model):
            out = _call(model, config.method, fn, adapter, inputs_on_device, targets.to(model.device),
                        layers=adapter.resolve_layers(config.layers, tower), mode=config.mode, qk=config.qk,
                        **config.options)
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
