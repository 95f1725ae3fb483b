"""Explanation methods: functions over adapter captures, registered by name.

An image method is ``fn(adapter, pixels, targets, **options) -> MapOutput`` with ``pixels`` a
(B, 3, H, W) batch on one grid and ``targets`` (K, D) unit-normalised text embeddings. A text method
is ``fn(adapter, tokens, targets, **options) -> TokenOutput`` with ``targets`` (B, D) unit-normalised
image embeddings. A new method is one new file that calls ``register_image_method`` /
``register_text_method``. A method whose defaults depend on the model (say, an embedding of a text)
registers ``prepare(model, targets, options) -> options`` beside it; ``explain_image`` calls it once
per call, before the batches. A costly method registers ``probe`` options that make a trial run cheap
(``explain.method_support`` and the evaluation try every method once to learn whether a model's family
can run it; a refusal never depends on these options).
"""

from __future__ import annotations

from typing import Callable

from .grad_eclip import QK_CHOICES, image_maps, token_relevance
from .outputs import MapOutput, TokenOutput, cosine_scores

ImageMethod = Callable[..., MapOutput]
TextMethod = Callable[..., TokenOutput]

IMAGE_METHODS: dict[str, ImageMethod] = {}
TEXT_METHODS: dict[str, TextMethod] = {}
PREPARE: dict[str, Callable[..., dict]] = {}
PROBE: dict[str, dict] = {}


def register_image_method(name: str, fn: ImageMethod, prepare: Callable[..., dict] | None = None,
                          probe: dict | None = None) -> ImageMethod:
    IMAGE_METHODS[name] = fn
    if prepare is not None:
        PREPARE[name] = prepare
    if probe is not None:
        PROBE[name] = dict(probe)
    return fn


def probe_options(name: str, options: dict) -> dict:
    """``options`` for a cheap trial run of image method ``name`` (its registered ``probe`` options on top)."""
    return {**options, **PROBE.get(name, {})}


def prepare_options(name: str, model, targets, options: dict) -> dict:
    """The options of image method ``name`` completed with its model-dependent defaults."""
    prepare = PREPARE.get(name)
    return prepare(model, targets, dict(options)) if prepare is not None else dict(options)


def register_text_method(name: str, fn: TextMethod) -> TextMethod:
    TEXT_METHODS[name] = fn
    return fn


def _lookup(table: dict, name: str, kind: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} method {name!r}; available: {', '.join(sorted(table))}") from None


def get_image_method(name: str) -> ImageMethod:
    return _lookup(IMAGE_METHODS, name, "image")


def get_text_method(name: str) -> TextMethod:
    return _lookup(TEXT_METHODS, name, "text")


def list_methods() -> dict[str, list[str]]:
    """Names of the registered image and text methods."""
    return {"image": sorted(IMAGE_METHODS), "text": sorted(TEXT_METHODS)}


register_image_method("grad_eclip", image_maps)
register_text_method("grad_eclip", token_relevance)


def _register_baselines() -> None:
    """The baselines of method.md section 5, each in its own module."""
    from . import (clip_surgery, game, grad_cam, grad_eclip_no_spatial, itsm, legrad, m2ib, maskclip,
                   raw_attention, rise, rollout)

    register_image_method("grad_eclip_no_spatial", grad_eclip_no_spatial.image_maps)
    register_image_method("raw_attention", raw_attention.image_maps)
    register_text_method("raw_attention", raw_attention.token_relevance)
    register_image_method("rollout", rollout.image_maps)
    register_image_method("grad_cam", grad_cam.image_maps)
    register_image_method("game", game.image_maps)
    register_image_method("game_last", game.last_layer_maps)
    register_text_method("game", game.token_relevance)
    register_image_method("maskclip", maskclip.image_maps)
    register_image_method("clip_surgery", clip_surgery.image_maps, prepare=clip_surgery.prepare)
    register_image_method("rise", rise.image_maps, probe={"masks": 2})
    register_image_method("m2ib", m2ib.image_maps, probe={"steps": 1, "samples": 1})
    register_text_method("m2ib", m2ib.token_relevance)
    register_image_method("itsm", itsm.image_maps)
    register_image_method("legrad", legrad.image_maps)


_register_baselines()

__all__ = [
    "IMAGE_METHODS", "QK_CHOICES", "TEXT_METHODS", "MapOutput", "TokenOutput", "cosine_scores", "get_image_method",
    "get_text_method", "image_maps", "list_methods", "prepare_options", "probe_options", "register_image_method",
    "register_text_method",
    "token_relevance",
]
