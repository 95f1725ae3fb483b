"""Explanation methods: functions over adapter captures, each declared by a ``MethodSpec`` in its own file.

An image method is ``fn(adapter, pixels, targets, **options) -> MapOutput`` with ``pixels`` a
(B, 3, H, W) batch on one grid and ``targets`` (K, D) unit-normalised text embeddings. A text method
is ``fn(adapter, tokens, targets, **options) -> TokenOutput`` with ``targets`` (B, D) unit-normalised
image embeddings. A new method is one new file that ends with ``SPEC = MethodSpec(...)`` (see
``registry.py``: what it requires of a model's towers, its options, its ``prepare`` hook and cheap
``probe`` options, how the evaluation, the authors' protocol and the explorers run it), imported and
registered below; ``registry.register(spec)`` registers one from anywhere else.
"""

from __future__ import annotations

from . import (clip_surgery, game, grad_cam, grad_eclip, grad_eclip_no_spatial, itm_gradcam, itsm, legrad, m2ib,
               maskclip, raw_attention, rise, rollout)
from .grad_eclip import QK_CHOICES, image_maps, token_relevance
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import (IMAGE_METHODS, TEXT_METHODS, AuthorsProtocol, ImageMethod, MethodSpec, TextMethod,
                       get_image_method, get_spec, get_text_method, list_methods, method_specs, prepare_options,
                       probe_options, refusal, register, register_image_method, register_text_method, unregister)

# Grad-ECLIP, then the baselines of docs/method.md section 6 (and the matching head's Grad-CAM); this order is the evaluation's and the explorers'
for _spec in (grad_eclip.SPEC, grad_eclip_no_spatial.SPEC, raw_attention.SPEC, rollout.SPEC, grad_cam.SPEC, game.SPEC,
              game.LAST_SPEC, maskclip.SPEC, clip_surgery.SPEC, rise.SPEC, m2ib.SPEC, itsm.SPEC, legrad.SPEC,
              itm_gradcam.SPEC):
    register(_spec)
del _spec

__all__ = [
    "IMAGE_METHODS", "QK_CHOICES", "TEXT_METHODS", "AuthorsProtocol", "ImageMethod", "MapOutput", "MethodSpec",
    "TextMethod", "TokenOutput", "cosine_scores", "get_image_method", "get_spec", "get_text_method", "image_maps",
    "list_methods", "method_specs", "prepare_options", "probe_options", "refusal", "register",
    "register_image_method", "register_text_method", "token_relevance", "unregister",
]
