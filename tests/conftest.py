"""Shared fixtures: small randomly initialised open_clip models, built offline.

Every model here gets realistic random parameters (``realistic.realistic_init``): non-zero biases in
every linear layer and attention projection, norms away from the identity, embeddings at the scale of
the patch tokens. A fresh open_clip init has zero biases and identity norms, which would hide any code
that drops or misplaces them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never touch the network
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from gradeclip_utils import wrap_model
from support.realistic import realistic_init


def make_tiny_clip(*, image_size=(48, 48), patch_size=8, width=64, heads=4, layers=3, text_width=48,
                   text_heads=4, text_layers=3, embed_dim=32, context_length=16, ls_init_value=None, seed=0):
    """A small open_clip CLIP (random weights) with the standard blocks; returns a LoadedModel."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=layers, width=width, head_width=width // heads, patch_size=patch_size,
                           image_size=image_size, ls_init_value=ls_init_value)
    text = CLIPTextCfg(context_length=context_length, vocab_size=49408, width=text_width, heads=text_heads,
                       layers=text_layers, ls_init_value=ls_init_value)
    model = CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)
    assert realistic_init(model, seed) == ["logit_scale"]
    model.eval()
    preprocess = open_clip.image_transform(image_size, is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return wrap_model(model, preprocess, tokenizer, name="tiny-test-clip")


@pytest.fixture(scope="session")
def tiny():
    return make_tiny_clip()


@pytest.fixture(scope="session")
def tiny_layerscale():
    return make_tiny_clip(ls_init_value=0.5, seed=1)


@pytest.fixture(scope="session")
def vit_b16():
    """open_clip ViT-B-16 with random weights (the paper's architecture), on the CPU."""
    from gradeclip_utils import load_model

    loaded = load_model("ViT-B-16", pretrained=None, device="cpu")
    assert realistic_init(loaded.model, 0) == ["logit_scale"]  # seeded: the same weights whichever tests ran before
    return loaded
