"""Robustness to the model given: unsupported families, train mode, requires_grad, half precision."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from open_clip.coca_model import CoCa, MultimodalCfg
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

import gradeclip_utils as ge
from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS

PROMPTS = ["a red circle", "a photo"]
PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(11))
TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
VIT = dict(layers=1, width=32, head_width=16, patch_size=8, image_size=32)


def wrap(model, image_size=32, name="custom"):
    return ge.wrap_model(model, open_clip.image_transform(image_size, is_train=False),
                         open_clip.tokenizer.SimpleTokenizer(context_length=16), name=name)


UNSUPPORTED = {
    "attentional-pool": (lambda: CLIP(16, CLIPVisionCfg(**VIT, attentional_pool=True, attn_pooler_queries=4,
                                                        attn_pooler_heads=2), CLIPTextCfg(**TEXT)),
                         "attentional pooler"),
    "average-pool": (lambda: CLIP(16, CLIPVisionCfg(**VIT, pool_type="avg"), CLIPTextCfg(**TEXT)), "pools with 'avg'"),
    "qk-norm": (lambda: CLIP(16, CLIPVisionCfg(**VIT, qk_norm=True), CLIPTextCfg(**TEXT)),
                r"open_clip ViT \(image tower uses q/k normalisation \(qk_norm\)"),
    "scaled-cosine": (lambda: CLIP(16, CLIPVisionCfg(**VIT), CLIPTextCfg(**TEXT, scaled_cosine_attn=True)),
                      r"text tower uses scaled cosine attention with a learnt logit scale"),
    "head-scale": (lambda: CLIP(16, CLIPVisionCfg(**VIT, scale_heads=True), CLIPTextCfg(**TEXT)),
                   r"per-head output scaling \(scale_heads\)"),
    "coca": (lambda: CoCa(16, MultimodalCfg(width=32, heads=2, layers=1, context_length=16), CLIPTextCfg(**TEXT),
                          CLIPVisionCfg(**VIT)), "family: CoCa"),
    "not-clip": (lambda: nn.Linear(4, 4), "family: Linear"),
}


@pytest.mark.parametrize("family", sorted(UNSUPPORTED))
def test_unsupported_families_fail_at_wrap_time_naming_the_family(family):
    build, pattern = UNSUPPORTED[family]
    with pytest.raises(ge.UnsupportedModelError, match=pattern) as error:
        wrap(build())
    assert "no adapter for this model family" in str(error.value)


def test_unsupported_folder_model_fails_at_load_time(tmp_path):
    import json

    config = {"model_cfg": {"embed_dim": 16, "vision_cfg": {**VIT, "pool_type": "avg"}, "text_cfg": TEXT}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ge.UnsupportedModelError, match="pools with 'avg'"):
        ge.load_model(str(tmp_path), device="cpu")


def test_a_bare_module_is_refused_with_directions(tiny):
    with pytest.raises(TypeError, match="wrap_model"):
        ge.explain_image(tiny.model, PIXELS, PROMPTS)
    with pytest.raises(TypeError, match="LoadedModel"):
        ge.explain_text("ViT-B-16", PIXELS, PROMPTS)


def training_flags(model):
    return [m.training for m in model.modules()]


def patch_dropout_clip():
    """A model whose train mode changes its output (patch dropout), so that eval mode matters."""
    torch.manual_seed(5)
    model = CLIP(16, CLIPVisionCfg(**VIT, patch_dropout=0.5), CLIPTextCfg(**TEXT))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3 / p.shape[-1] ** 0.5)
    return wrap(model, name="patch-dropout")


def test_train_mode_gives_the_eval_result_and_is_restored():
    loaded = patch_dropout_clip()
    pixels = PIXELS[:, :, :32, :32]
    expected = ge.explain_image(loaded, pixels, PROMPTS)
    expected_text = ge.explain_text(loaded, pixels, PROMPTS)
    model = loaded.model
    model.train()
    model.visual.ln_post.eval()  # a mix of flags must come back as it was, module by module
    flags = training_flags(model)
    with torch.no_grad():  # the check itself: in train mode the model's output really differs
        torch.manual_seed(0)
        train_out = model.encode_image(pixels)
    assert not torch.allclose(train_out, model.eval().encode_image(pixels))
    for module, flag in zip(model.modules(), flags):
        module.training = flag
    got = ge.explain_image(loaded, pixels, PROMPTS)
    got_text = ge.explain_text(loaded, pixels, PROMPTS)
    assert training_flags(model) == flags
    assert torch.equal(got.maps, expected.maps) and torch.equal(got.scores, expected.scores)
    assert torch.equal(got_text.word_importance, expected_text.word_importance)


def requires_grad_flags(model):
    return [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("freeze", ["none", "all", "image-tower"])
def test_requires_grad_flags_and_grads_are_left_as_they_were(tiny, freeze):
    model = copy.deepcopy(tiny.model)
    loaded = ge.wrap_model(model, tiny.preprocess, tiny.tokenizer)
    expected = ge.explain_image(tiny, PIXELS, PROMPTS, layers=(0, 2))
    expected_text = ge.explain_text(tiny, PIXELS, PROMPTS)
    if freeze == "all":
        model.requires_grad_(False)
    elif freeze == "image-tower":
        model.visual.requires_grad_(False)
    flags = requires_grad_flags(model)
    got = ge.explain_image(loaded, PIXELS, PROMPTS, layers=(0, 2))
    got_text = ge.explain_text(loaded, PIXELS, PROMPTS)
    assert requires_grad_flags(model) == flags
    assert all(p.grad is None for p in model.parameters())
    # frozen weights change which gradients autograd builds, so float32 rounding may differ in the last bits
    assert (got.maps - expected.maps).abs().max() <= 1e-6
    assert (got_text.token_importance - expected_text.token_importance).abs().max() <= 1e-6


def test_existing_gradients_are_untouched(tiny, monkeypatch):
    """A model mid-training keeps its .grad tensors, values and identity, even when a method calls
    backward() (which would accumulate into them)."""
    model = copy.deepcopy(tiny.model)
    loaded = ge.wrap_model(model, tiny.preprocess, tiny.tokenizer)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    before = {id(p): (p.grad, p.grad.clone()) for p in model.parameters()}
    original = IMAGE_METHODS["grad_eclip"]

    def with_backward(adapter, pixels, targets, **options):
        out = original(adapter, pixels, targets, **options)
        adapter.trace_image(pixels, [adapter.num_image_blocks - 1]).embedding.sum().backward()
        return out

    monkeypatch.setitem(IMAGE_METHODS, "grad_eclip", with_backward)
    ge.explain_image(loaded, PIXELS, PROMPTS)
    for p in model.parameters():
        grad, values = before[id(p)]
        assert p.grad is grad and torch.equal(p.grad, values)


def test_fp16_on_cpu(tiny, monkeypatch):
    """load_model refuses fp16 on the CPU; a wrapped fp16 model runs where torch has the kernels and
    otherwise fails with a clear error."""
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        ge.load_model("ViT-B-16", device="cpu", precision="fp16")
    half = ge.wrap_model(copy.deepcopy(tiny.model).half(), tiny.preprocess, tiny.tokenizer)
    assert half.precision == "fp16"
    full = ge.explain_image(tiny, PIXELS, PROMPTS)
    got = ge.explain_image(half, PIXELS, PROMPTS)
    assert got.maps.dtype == torch.float32 and torch.isfinite(got.maps).all()
    assert (got.maps - full.maps).abs().max() <= 0.02 * full.maps.abs().max()
    assert (got.scores - full.scores).abs().max() <= 0.01

    def missing_kernel(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    monkeypatch.setitem(IMAGE_METHODS, "grad_eclip", missing_kernel)
    monkeypatch.setitem(TEXT_METHODS, "grad_eclip", missing_kernel)
    with pytest.raises(RuntimeError, match=r"half-precision \(fp16\) model on the CPU.*model.float\(\)"):
        ge.explain_image(half, PIXELS, PROMPTS)
    with pytest.raises(RuntimeError, match=r"model.float\(\)"):
        ge.explain_text(half, PIXELS, PROMPTS)
    with pytest.raises(RuntimeError, match="^\"addmm_impl_cpu_\" not implemented"):  # fp32: passed through as is
        ge.explain_image(tiny, PIXELS, PROMPTS)


def test_non_finite_weights_give_a_clear_error_not_nan_maps(tiny):
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.visual.proj[0, 0] = float("nan")
    broken = ge.wrap_model(model, tiny.preprocess, tiny.tokenizer)
    with pytest.raises(FloatingPointError, match=r"non-finite.*tensor\[0\]"):
        ge.explain_image(broken, PIXELS, PROMPTS)
    with pytest.raises(FloatingPointError, match="non-finite"):
        ge.explain_text(broken, PIXELS, PROMPTS)
