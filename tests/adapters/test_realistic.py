"""tests/support/realistic.py covers every parameter of every CLIP family the reference comparisons use or will use
(open_clip ViT and ResNet, OpenAI's clip, Hugging Face), seeded, with attention that stays peaked."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from support.realistic import realistic_init

TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2)


def open_clip_vit():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(16, CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32, ls_init_value=0.1),
                CLIPTextCfg(**TEXT))


def open_clip_resnet():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(16, CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=32, head_width=8), CLIPTextCfg(**TEXT))


def openai_clip():
    with warnings.catch_warnings():  # the clip package imports pkg_resources, deprecated by setuptools
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from clip.model import CLIP

    # embed_dim, image size, vision layers, vision width (heads = width / 64), patch, context, vocabulary,
    # text width, text heads, text layers
    return CLIP(16, 32, 2, 64, 8, 16, 49408, 32, 2, 2)


def hugging_face():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                         num_hidden_layers=2, max_position_embeddings=16),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                           num_hidden_layers=2, image_size=32, patch_size=8),
                        projection_dim=16)
    return CLIPModel(config)


FAMILIES = {"open_clip-vit": open_clip_vit, "open_clip-resnet": open_clip_resnet, "openai-clip": openai_clip,
            "hugging-face": hugging_face}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_parameter_is_redrawn_away_from_the_special_values(family):
    model = FAMILIES[family]()
    untouched = realistic_init(model, seed=3)
    assert untouched == ["logit_scale"]
    biases = [(name, p.detach()) for name, p in model.named_parameters() if "bias" in name.rsplit(".", 1)[-1]]
    assert biases
    for name, p in biases:  # every bias drawn, none left at zero
        assert bool((p != 0).all()), name
    pooled = torch.cat([p.flatten() for _, p in biases])
    assert float(pooled.std()) == pytest.approx(0.1, rel=0.1)  # N(0, 0.1) over all of them
    norms = [m for m in model.modules()
             if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]
    assert norms
    for m in norms:  # every gain drawn in [0.6, 1.4]; BatchNorm's running statistics too
        weight = m.weight.detach()
        assert 0.6 <= float(weight.min()) and float(weight.max()) <= 1.4 and float((weight - 1).abs().max()) > 0.05
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert float((m.running_var - 1).abs().max()) > 0.05 and bool((m.running_mean != 0).all())
    pooled = torch.cat([m.weight.detach().flatten() for m in norms])
    assert float(pooled.std()) == pytest.approx(0.8 / math.sqrt(12), rel=0.15)  # U(0.6, 1.4) over all of them
    # class, positional and token embeddings (not a patch embedding: that is a convolution)
    embeddings = [p.detach() for name, p in model.named_parameters() if "embedding" in name and p.ndim <= 2]
    assert embeddings
    for p in embeddings:
        assert float(p.std()) == pytest.approx(0.5, rel=0.2)


def test_seeded_and_independent_of_the_global_random_state():
    first, second, other = open_clip_vit(), open_clip_vit(), open_clip_vit()
    realistic_init(first, seed=5)
    torch.manual_seed(123)
    torch.rand(10)
    realistic_init(second, seed=5)
    realistic_init(other, seed=6)
    for (name, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
        if a.is_floating_point() and a.numel() > 1 and name != "attn_mask" and not name.endswith("attn_mask"):
            assert not torch.equal(a, c), name


def test_layerscale_keeps_its_scale_but_not_its_uniformity():
    model = open_clip_vit()
    realistic_init(model, seed=0)
    gamma = model.visual.transformer.resblocks[0].ls_1.gamma.detach()
    assert 0.06 <= float(gamma.min()) and float(gamma.max()) <= 0.14 and float(gamma.std()) > 0.01


def test_class_token_attention_stays_peaked(tiny):
    """The tiny model of conftest.py: in every image block the class token's attention has an entropy well
    below the uniform log N, so maps stay informative."""
    from support import reference

    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, captures, _ = reference.image_forward(tiny.model, pixels, [0, 1, 2])
    heads = tiny.model.visual.transformer.resblocks[0].attn.num_heads
    for layer, (q, k, _, _) in captures.items():
        d = q.shape[-1] // heads
        qh = q.reshape(2, -1, heads, d).transpose(1, 2)[:, :, :1]
        kh = k.reshape(2, -1, heads, d).transpose(1, 2)
        probs = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)
        entropy = float(-(probs * probs.log()).sum(-1).mean())
        assert entropy < 0.75 * math.log(q.shape[1]), (layer, entropy)
