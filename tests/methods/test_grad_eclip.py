"""Grad-ECLIP's batched implementation against the literal equations of docs/method.md sections 1-4."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip_utils as ge
from support import reference
from gradeclip_utils.inputs import prepare_images

TOL = 1e-5
PROMPTS = ["a red circle", "two blue squares left of a star", "a photo"]


def scene(width=56, height=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    array = (torch.rand(height, width, 3, generator=generator) * 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


def noise(batch, height, width, seed=0):
    """Seeded pixels: results must not depend on which tests ran before."""
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def text_targets(model, prompts):
    with torch.no_grad():
        return F.normalize(model.model.encode_text(model.tokenize(prompts)), dim=-1)


@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("layers", [(-1,), (1,), (0, 2)], ids=["last", "intermediate", "several"])
@pytest.mark.parametrize("resolution", ["native", "model"])
def test_image_maps_equal_literal_equations(tiny, mode, qk, layers, resolution):
    images = [scene(56, 40, seed=1), scene(56, 40, seed=2)]
    explanation = ge.explain_image(tiny, images, PROMPTS, layers=layers, mode=mode, qk=qk, resolution=resolution)
    pixels = torch.stack([p.pixels for p in prepare_images(tiny, images, resolution)])
    absolute = [layer % 3 for layer in layers]
    expected, scores = reference.image_maps(tiny.model, pixels, text_targets(tiny, PROMPTS), absolute,
                                            official=mode == "official", qk=qk)
    assert explanation.maps.shape == expected.shape
    assert expected.abs().max() > 1e-3, "the reference map is degenerate; the comparison would prove nothing"
    assert (explanation.maps - expected).abs().max() <= TOL
    assert (explanation.scores - scores).abs().max() <= TOL


def test_image_maps_with_layerscale_equal_literal_equations(tiny_layerscale):
    pixels = noise(2, 48, 48)
    explanation = ge.explain_image(tiny_layerscale, pixels, PROMPTS, layers=(0, 2))
    expected, _ = reference.image_maps(tiny_layerscale.model, pixels, text_targets(tiny_layerscale, PROMPTS), [0, 2])
    assert (explanation.maps - expected).abs().max() <= TOL


def test_many_prompts_use_the_jacobian_path_and_match(tiny):
    """K = 40 > D = 32 takes the embedding-Jacobian path; it must give the same maps."""
    embed_dim = tiny.adapter.embed_dim
    targets = F.normalize(torch.randn(embed_dim + 8, embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    pixels = noise(2, 48, 48)
    for layers in [(-1,), (0, 2)]:
        explanation = ge.explain_image(tiny, pixels, targets, layers=layers)
        expected, scores = reference.image_maps(tiny.model, pixels, targets, [l % 3 for l in layers])
        assert (explanation.maps - expected).abs().max() <= TOL
        assert (explanation.scores - scores).abs().max() <= TOL


def test_chunked_cotangents_match_one_chunk(tiny):
    pixels = noise(2, 48, 48)
    one = ge.explain_image(tiny, pixels, PROMPTS, layers=(0, 2))
    chunked = ge.explain_image(tiny, pixels, PROMPTS, layers=(0, 2), chunk=1)
    assert (one.maps - chunked.maps).abs().max() <= 1e-6


@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("layers", [(-1,), (1,), 2], ids=["last", "intermediate", "last-two"])
def test_text_relevance_equals_literal_equations(tiny, mode, qk, layers):
    texts = ["a red circle and a blue square", "three green triangles", "a star"]
    pixels = noise(2, 48, 48)
    explanation = ge.explain_text(tiny, pixels, texts, layers=layers, mode=mode, qk=qk)
    absolute = tiny.adapter.resolve_layers(layers, "text")
    tokens = tiny.tokenize(texts)
    with torch.no_grad():
        image_targets = F.normalize(tiny.model.encode_image(pixels), dim=-1)
    relevance, scores = reference.text_relevance(tiny.model, tokens, image_targets, absolute,
                                                 official=mode == "official", qk=qk)
    assert (explanation.scores - scores).abs().max() <= TOL
    eos = tokens.argmax(dim=-1)
    assert relevance.max() > 0, "degenerate reference: the comparison would prove nothing"
    for k in range(len(texts)):
        kept = relevance[:, k, 1:int(eos[k])]
        total = kept.sum(dim=-1, keepdim=True)
        expected = torch.where(total > 0, kept / total, torch.zeros_like(kept))  # nothing relevant: zeros
        got = explanation.token_importance[:, k, :kept.shape[-1]]
        assert (got - expected).abs().max() <= TOL
        assert torch.allclose(got.sum(dim=-1), (total[:, 0] > 0).float(), atol=1e-5)


def test_text_word_importance_sums_pieces(tiny):
    explanation = ge.explain_text(tiny, noise(1, 48, 48), ["an unbelievably photogenic armadillo"])
    pair = explanation.pair(0, 0)
    assert len(pair.tokens) > len(pair.words), "the text should split into several BPE pieces per word"
    assert "".join(p.replace("</w>", "") for p in pair.tokens) == "".join(pair.words)
    assert pair.words == ["an", "unbelievably", "photogenic", "armadillo"]
    assert math.isclose(float(pair.word_importance.sum()), float(pair.token_importance.sum()), abs_tol=1e-6)


def test_text_importance_on_vit_b16(vit_b16):
    """The real architecture (12 text blocks, the authors' last 8) against the literal equations."""
    texts = ["a dog playing with a ball"]
    pixels = noise(1, 224, 224)
    explanation = ge.explain_text(vit_b16, pixels, texts, layers=8)
    tokens = vit_b16.tokenize(texts)
    with torch.no_grad():
        image_targets = F.normalize(vit_b16.model.encode_image(pixels), dim=-1)
    relevance, _ = reference.text_relevance(vit_b16.model, tokens, image_targets, list(range(4, 12)))
    eos = int(tokens.argmax())
    expected = relevance[0, 0, 1:eos] / relevance[0, 0, 1:eos].sum()
    assert (explanation.token_importance[0, 0, :eos - 1] - expected).abs().max() <= TOL


def test_no_spatial_weight_is_relu_of_attention_gradient(tiny):
    """docs/method.md section 2.3: sum_c w_c v_i[c] = dS/da_cls,i summed over heads, so Grad-ECLIP without
    the spatial weight equals ReLU of the gradient with respect to the class-token attention weights."""
    model = tiny.model
    pixels = noise(2, 48, 48)
    targets = text_targets(tiny, PROMPTS)
    explanation = ge.explain_image(tiny, pixels, targets, layers=(-1,), spatial_weight=False)

    visual = model.visual
    blocks = visual.transformer.resblocks
    with torch.enable_grad():
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding[None, None].expand(2, 1, -1), x], 1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for blk in blocks[:-1]:
            x = blk(x)
        last = blocks[-1]
        width, heads = x.shape[-1], last.attn.num_heads
        d = width // heads
        q, k, v = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias).split(width, -1)
        qh = q.reshape(2, -1, heads, d).transpose(1, 2)
        kh = k.reshape(2, -1, heads, d).transpose(1, 2)
        vh = v.reshape(2, -1, heads, d).transpose(1, 2)
        probs = torch.softmax(qh[:, :, :1] @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        a_cls = probs.detach().clone().requires_grad_(True)  # (B, H, 1, N): the class row, a leaf
        o_cls = (a_cls @ vh).transpose(1, 2).reshape(2, width)
        y = x[:, 0] + last.ls_1(last.attn.out_proj(o_cls))
        y = y + last.ls_2(last.mlp(last.ln_2(y)))
        embedding = visual.ln_post(y) @ visual.proj
        scores = F.normalize(embedding, dim=-1) @ targets.T
        for kk in range(targets.shape[0]):
            grad = torch.autograd.grad(scores[:, kk].sum(), a_cls, retain_graph=True)[0]  # (B, H, 1, N)
            expected = grad.sum(dim=1)[:, 0, 1:].relu().reshape(2, 6, 6)
            assert expected.abs().max() > 1e-4
            assert (explanation.maps[:, kk] - expected).abs().max() <= TOL


def test_faithful_scores_are_the_models_cosine_and_official_differ(vit_b16):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a dog", "a diagram", "a red car"]
    with torch.no_grad():
        image = F.normalize(vit_b16.model.encode_image(pixels), dim=-1)
        text = F.normalize(vit_b16.model.encode_text(vit_b16.tokenize(prompts)), dim=-1)
    expected = image @ text.T
    faithful = ge.explain_image(vit_b16, pixels, prompts)
    official = ge.explain_image(vit_b16, pixels, prompts, mode="official")
    assert (faithful.scores - expected).abs().max() <= 1e-5
    # random weights give small cosines (~0.01): the single-head recomputation moves them by several percent
    assert (official.scores - expected).abs().max() > 0.02 * expected.abs().max()
    text_faithful = ge.explain_text(vit_b16, pixels, prompts, layers=8)
    text_official = ge.explain_text(vit_b16, pixels, prompts, layers=8, mode="official")
    assert (text_faithful.scores - expected).abs().max() <= 1e-5
    assert (text_official.scores - expected).abs().max() > 0.02 * expected.abs().max()


def test_vit_b16_map_equals_literal_equations(vit_b16):
    image = scene(300, 200, seed=5)
    explanation = ge.explain_image(vit_b16, image, ["a dog"], resolution="native")
    pixels = prepare_images(vit_b16, image, "native")[0].pixels[None]
    assert pixels.shape[-2:] == (208, 304)
    expected, _ = reference.image_maps(vit_b16.model, pixels, text_targets(vit_b16, ["a dog"]), [11])
    assert explanation.maps.shape == (1, 1, 13, 19)
    assert (explanation.maps - expected).abs().max() <= TOL


def test_shapes_for_non_square_images_and_batches(tiny):
    images = [scene(80, 40, 0), scene(40, 80, 1), scene(80, 40, 2)]
    explanation = ge.explain_image(tiny, images, PROMPTS, resolution="native")
    assert explanation.grid_sizes == [(5, 10), (10, 5), (5, 10)]
    assert explanation.scores.shape == (3, 3)
    with pytest.raises(ValueError, match="different patch grids"):
        explanation.maps
    assert explanation[0].maps.shape == (1, 3, 5, 10)
    assert explanation[1].heatmaps().shape == (1, 3, 80, 40)
    same = ge.explain_image(tiny, [images[0], images[2]], PROMPTS)
    assert same.maps.shape == (2, 3, 5, 10)
    assert same.heatmaps(size=(20, 30)).shape == (2, 3, 20, 30)
    # batching does not change the maps
    singles = torch.cat([ge.explain_image(tiny, im, PROMPTS).maps for im in (images[0], images[2])])
    assert (singles - same.maps).abs().max() <= 1e-6
    model_res = ge.explain_image(tiny, images, PROMPTS, resolution="model")
    assert model_res.maps.shape == (3, 3, 6, 6)
    for ex in (explanation, model_res):
        for raw in ex.raw:
            assert torch.isfinite(raw).all() and (raw >= 0).all()
    heat = model_res.heatmaps()
    assert heat.min() >= 0 and heat.max() <= 1


def test_heatmaps_are_the_bilinear_upsampling_then_min_max_of_the_raw_maps(tiny):
    """heatmaps(): bilinear (align_corners=False) to the picture's size, then min-max per map. By hand, a
    1 x 2 map [0, 2] on 1 x 4 pixels is [0, 0.5, 1.5, 2], normalised [0, 0.25, 0.75, 1]; a 2 x 1 map
    [[4], [0]] on 4 x 2 pixels has rows 4, 3, 1, 0. Then a real non-square explanation against torch's
    interpolation and an explicit min-max."""
    from gradeclip_utils.maps import normalise_maps, resize_maps

    assert normalise_maps(resize_maps(torch.tensor([[0.0, 2.0]]), (1, 4))).tolist() == [[0.0, 0.25, 0.75, 1.0]]
    assert resize_maps(torch.tensor([[4.0], [0.0]]), (4, 2)).tolist() == [[4.0, 4.0], [3.0, 3.0], [1.0, 1.0],
                                                                   [0.0, 0.0]]
    explanation = ge.explain_image(tiny, scene(56, 40, seed=3), PROMPTS[:2], resolution="native")
    raw = explanation.maps  # (1, 2, 5, 7) for 40 x 56 pixels
    up = F.interpolate(raw, size=(40, 56), mode="bilinear", align_corners=False)
    low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
    assert (high > low).all()
    assert torch.allclose(explanation.heatmaps(), (up - low) / (high - low), atol=1e-6)
    assert np.allclose(explanation.heatmap(0, 1), ((up - low) / (high - low))[0, 1].numpy(), atol=1e-6)


def test_all_zero_and_constant_maps_normalise_to_zeros():
    from gradeclip_utils.maps import minmax, normalise_maps

    zeros = torch.zeros(2, 3, 4, 5)
    assert torch.equal(normalise_maps(zeros), zeros)
    assert torch.equal(normalise_maps(torch.full((1, 4, 4), 7.0)), torch.zeros(1, 4, 4))
    assert torch.equal(minmax(torch.full((3, 10), -2.5)), torch.zeros(3, 10))
    ramp = normalise_maps(torch.arange(6.0).reshape(1, 2, 3))
    assert ramp.min() == 0 and ramp.max() == 1


def test_constant_keys_give_zero_spatial_weight_not_nan():
    from gradeclip_utils.adapters import BlockCapture
    from gradeclip_utils.methods.grad_eclip import loosened_attention

    q = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
    k = torch.ones(1, 5, 8)
    capture = BlockCapture(layer=0, q=q, k=k, v=k, attn_output=k, token_output=k[:, 0], heads=1,
                           out_proj_weight=torch.eye(8), out_proj_bias=None)
    weights = loosened_attention(capture, torch.zeros(1, dtype=torch.long), "raw", 1)
    assert torch.equal(weights, torch.zeros(1, 4))


def test_spatial_weight_is_normalised_over_the_patches_only():
    """docs/method.md section 2.2: r_i = cos(q_cls, k_i) for patch tokens i, the class token's own key excluded, then
    min-max over the patches. Hand values with the class token's key the most similar one (cos 1): over
    the patches' cosines 0, 1/sqrt(2) and -1 the weights are 1 / (1 + 1/sqrt(2)), 1 and 0; normalising
    over the class token too would give 0.5, 0.854, 0. Text (first key 0) keeps every position."""
    from gradeclip_utils.adapters import BlockCapture
    from gradeclip_utils.methods.grad_eclip import loosened_attention

    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    q = torch.stack([e1, e2, e2, e2])[None]
    k = torch.stack([e1, e2, (e1 + e2) / math.sqrt(2), -e1])[None]
    capture = BlockCapture(layer=0, q=q, k=k, v=k, attn_output=k, token_output=k[:, 0], heads=1,
                           out_proj_weight=torch.eye(2), out_proj_bias=None)
    image = loosened_attention(capture, torch.zeros(1, dtype=torch.long), "raw", 1)
    assert torch.allclose(image, torch.tensor([[1 / (1 + 1 / math.sqrt(2)), 1.0, 0.0]]), atol=1e-6)
    text = loosened_attention(capture, torch.zeros(1, dtype=torch.long), "raw", 0)
    assert torch.allclose(text, torch.tensor([[1.0, 0.5, (1 / math.sqrt(2) + 1) / 2, 0.0]]), atol=1e-6)


def test_other_batch_layout_gives_the_same_maps(tiny):
    """open_clip's older sequence-first layout (batch_first=False) is handled."""
    pixels = noise(2, 48, 48)
    expected = ge.explain_image(tiny, pixels, PROMPTS, layers=(0, 2))
    seq_first = copy.deepcopy(tiny.model)
    for transformer in (seq_first.visual.transformer, seq_first.transformer):
        transformer.batch_first = False
        for block in transformer.resblocks:
            block.attn.batch_first = False
    with torch.no_grad():
        assert torch.allclose(seq_first.encode_image(pixels), tiny.model.encode_image(pixels), atol=1e-6)
    other = ge.wrap_model(seq_first, tiny.preprocess, tiny.tokenizer)
    got = ge.explain_image(other, pixels, PROMPTS, layers=(0, 2))
    assert (got.maps - expected.maps).abs().max() <= TOL
