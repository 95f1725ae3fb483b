"""Each baseline of docs/method.md section 6 against an independent, literal computation.

The literal forward below re-implements the open_clip ViT towers head by head (no adapter code) and
keeps what the baselines need: the attention probabilities of every head with their graph, the
tokens entering every block and the final tokens. Gradients are taken one (image, prompt) at a time.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.methods import get_image_method, get_text_method, list_methods
from gradeclip_utils.methods.clip_surgery import default_depth
from gradeclip_utils.methods.m2ib import capacity, default_layer
from gradeclip_utils.methods.rise import generate_masks

TOL = 1e-5
PROMPTS = ["a red circle", "two blue squares left of a star", "a photo"]
BASELINES = ["raw_attention", "rollout", "grad_cam", "game", "game_last", "maskclip", "clip_surgery", "rise",
             "m2ib", "itsm", "grad_eclip_no_spatial", "legrad"]


def text_targets(model, prompts):
    with torch.no_grad():
        return F.normalize(model.model.encode_text(model.tokenize(prompts)), dim=-1)


def image_targets(model, pixels):
    with torch.no_grad():
        return F.normalize(model.model.encode_image(pixels), dim=-1)


def _qkv(blk, x):
    width = x.shape[-1]
    h = blk.ln_1(x)
    w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    return (h @ w[:width].T + b[:width], h @ w[width:2 * width].T + b[width:2 * width],
            h @ w[2 * width:].T + b[2 * width:])


def literal_tower(blocks, x, mask=None):
    """Run blocks literally; returns final tokens, block inputs and per-block lists of head probs."""
    inputs, probs = [], []
    for blk in blocks:
        inputs.append(x)
        q, k, v = _qkv(blk, x)
        heads = blk.attn.num_heads
        d = x.shape[-1] // heads
        outs, head_probs = [], []
        for hd in range(heads):
            cols = slice(hd * d, (hd + 1) * d)
            logits = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d)
            if mask is not None:
                logits = logits + mask
            a = torch.softmax(logits, dim=-1)
            head_probs.append(a)
            outs.append(a @ v[..., cols])
        probs.append(head_probs)
        x = x + blk.ls_1(blk.attn.out_proj(torch.cat(outs, dim=-1)))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, inputs, probs


def literal_image(model, pixels):
    visual = model.visual
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding[None, None].expand(x.shape[0], 1, -1), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding)
    final, inputs, probs = literal_tower(visual.transformer.resblocks, x)
    embedding = visual.ln_post(final[:, 0]) @ visual.proj
    return embedding, inputs, probs, final


def literal_text(model, tokens):
    x = model.token_embedding(tokens) + model.positional_embedding[:tokens.shape[1]]
    mask = model.attn_mask[:tokens.shape[1], :tokens.shape[1]]
    final, inputs, probs = literal_tower(model.transformer.resblocks, x, mask)
    eos = tokens.argmax(dim=-1)
    embedding = model.ln_final(final)[torch.arange(tokens.shape[0]), eos] @ model.text_projection
    return embedding, inputs, probs, eos


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def grid_of(model, pixels):
    p = model.visual.patch_size[0]
    return pixels.shape[-2] // p, pixels.shape[-1] // p


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))


def test_registry_lists_every_baseline():
    names = list_methods()
    assert set(BASELINES) | {"grad_eclip"} <= set(names["image"])
    assert {"grad_eclip", "raw_attention", "game", "m2ib"} <= set(names["text"])
    with pytest.raises(ValueError, match="unknown image method 'nope'"):
        get_image_method("nope")


def test_raw_attention_is_class_row_mean_of_heads(tiny, pixels):
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="raw_attention")
    with torch.no_grad():
        _, _, probs, _ = literal_image(tiny.model, pixels)
    expected = torch.stack(probs[-1]).mean(0)[:, 0, 1:].reshape(2, *grid_of(tiny.model, pixels))
    for k in range(len(PROMPTS)):
        assert (ex.maps[:, k] - expected).abs().max() <= TOL
    two = ge.explain_image(tiny, pixels, PROMPTS, method="raw_attention", layers=(0, 2))
    both = (torch.stack(probs[0]).mean(0) + torch.stack(probs[2]).mean(0))[:, 0, 1:] / 2
    assert (two.maps[:, 0] - both.reshape(expected.shape)).abs().max() <= TOL


def test_raw_attention_text_is_eos_row(tiny, pixels):
    texts = ["a red circle and a blue square", "three stars"]
    tokens = tiny.tokenize(texts)
    with torch.no_grad():
        _, _, probs, eos = literal_text(tiny.model, tokens)
    out = get_text_method("raw_attention")(tiny.adapter, tokens, image_targets(tiny, pixels), layers=[2])
    expected = torch.stack(probs[2]).mean(0)[torch.arange(2), eos]
    assert out.relevance.shape == (2, 2, tokens.shape[1])
    assert (out.relevance - expected[None]).abs().max() <= TOL


@pytest.mark.parametrize("start", [0, 1, -1])
def test_rollout_is_product_of_normalised_attention(tiny, pixels, start):
    ex = ge.explain_image(tiny, pixels, PROMPTS[:1], method="rollout", start_layer=start)
    with torch.no_grad():
        _, _, probs, _ = literal_image(tiny.model, pixels)
    first = start % 3
    for b in range(2):
        rollout = None
        for layer in range(first, 3):
            a = torch.stack(probs[layer]).mean(0)[b].double()
            a = a + torch.eye(a.shape[0], dtype=torch.float64)
            a = a / a.sum(dim=1, keepdim=True)
            rollout = a if rollout is None else a @ rollout
        expected = rollout[0, 1:].reshape(grid_of(tiny.model, pixels)).float()
        assert (ex.maps[b, 0] - expected).abs().max() <= TOL


def test_grad_cam_uses_tokens_entering_last_block(tiny, pixels):
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="grad_cam")
    grid = grid_of(tiny.model, pixels)
    with torch.enable_grad():
        embedding, inputs, _, final = literal_image(tiny.model, pixels)
        for b in range(2):
            for k in range(3):
                s = cos(embedding[b], targets[k])
                grad, final_grad = torch.autograd.grad(s, [inputs[-1], final], retain_graph=True)
                # the trap: the last block's patch outputs never reach the embedding
                assert final_grad[b, 1:].abs().max() == 0
                alpha = grad[b, 1:].mean(dim=0)
                expected = torch.relu(inputs[-1][b, 1:].detach() @ alpha).reshape(grid)
                assert expected.abs().max() > 1e-4
                assert (ex.maps[b, k] - expected).abs().max() <= TOL


def literal_game(scores_fn, probs, start, row_index, size):
    """Chefer's loop for one score: R <- R + mean_h(clamp(grad * A, 0)) R from block ``start`` on."""
    s = scores_fn()
    layers = list(range(start, len(probs)))
    grads = torch.autograd.grad(s, [a for layer in layers for a in probs[layer]], retain_graph=True)
    relevance = torch.eye(size, dtype=torch.float64)
    position = 0
    for layer in layers:
        cams = []
        for a in probs[layer]:
            cams.append((grads[position] * a.detach()).clamp(min=0))
            position += 1
        cam = torch.stack(cams).mean(0)[row_index[0]].double()
        relevance = relevance + cam @ relevance
    return relevance[row_index[1]]


@pytest.mark.parametrize("method,start", [("game", 0), ("game_last", 2)])
def test_game_image_relevance_equals_chefer_loop(tiny, pixels, method, start):
    """Chefer et al. differentiate the logit exp(logit_scale) x cos (their ``logits_per_image``)."""
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method=method, chunk=2)
    grid = grid_of(tiny.model, pixels)
    scale = tiny.model.logit_scale.detach().exp()
    with torch.enable_grad():
        embedding, _, probs, _ = literal_image(tiny.model, pixels)
        size = probs[0][0].shape[-1]
        for b in range(2):
            for k in range(3):
                row = literal_game(lambda: scale * cos(embedding[b], targets[k]), probs, start, (b, 0), size)
                expected = row[1:].reshape(grid).float()
                assert expected.abs().max() > 1e-6
                assert (ex.maps[b, k] - expected).abs().max() <= TOL


def test_game_text_relevance_equals_chefer_loop(tiny, pixels):
    texts = ["a red circle and a blue square", "three stars"]
    tokens = tiny.tokenize(texts)
    images = image_targets(tiny, pixels)
    out = get_text_method("game")(tiny.adapter, tokens, images, chunk=1)
    scale = tiny.model.logit_scale.detach().exp()
    with torch.enable_grad():
        embedding, _, probs, eos = literal_text(tiny.model, tokens)
        for b in range(2):
            for k in range(2):
                row = literal_game(lambda: scale * cos(embedding[k], images[b]), probs, 0, (k, int(eos[k])),
                                   tokens.shape[1])
                assert (out.relevance[b, k] - row.float()).abs().max() <= TOL
                assert abs(float(out.scores[b, k]) - float(cos(embedding[k], images[b]).detach())) <= TOL


def test_grad_eclip_without_spatial_weight_is_relu_of_attention_gradient(tiny, pixels):
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="grad_eclip_no_spatial")
    grid = grid_of(tiny.model, pixels)
    with torch.enable_grad():
        embedding, _, probs, _ = literal_image(tiny.model, pixels)
        for b in range(2):
            for k in range(3):
                grads = torch.autograd.grad(cos(embedding[b], targets[k]), probs[-1], retain_graph=True)
                expected = torch.relu(sum(g[b, 0, 1:] for g in grads)).reshape(grid)
                assert (ex.maps[b, k] - expected).abs().max() <= TOL


def test_maskclip_is_value_path_cosine(tiny, pixels):
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="maskclip")
    visual = tiny.model.visual
    blk = visual.transformer.resblocks[-1]
    with torch.no_grad():
        _, inputs, _, _ = literal_image(tiny.model, pixels)
        x = inputs[-1]
        _, _, v = _qkv(blk, x)
        for b in range(2):
            for i in range(1, x.shape[1]):
                u = x[b, i] + blk.attn.out_proj(v[b, i])
                u = u + blk.mlp(blk.ln_2(u))
                feature = visual.ln_post(u) @ visual.proj
                for k in range(3):
                    r, c = divmod(i - 1, grid_of(tiny.model, pixels)[1])
                    assert abs(float(ex.maps[b, k, r, c]) - float(cos(feature, targets[k]))) <= TOL


def test_itsm_is_final_patch_token_cosine(tiny, pixels):
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="itsm")
    visual = tiny.model.visual
    with torch.no_grad():
        _, _, _, final = literal_image(tiny.model, pixels)
        features = visual.ln_post(final[:, 1:]) @ visual.proj
    expected = torch.stack([torch.stack([torch.stack([cos(f, targets[k]) for f in features[b]])
                                         for k in range(3)]) for b in range(2)])
    assert (ex.maps - expected.reshape(ex.maps.shape)).abs().max() <= TOL


def literal_surgery_features(model, pixels, depth):
    """The authors' dual-path forward: v-v attention on a new path from the last ``depth`` blocks."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        _, inputs, _, final = literal_image(model, pixels)
        start = len(blocks) - depth
        new = inputs[start]
        for index in range(start, len(blocks)):
            blk = blocks[index]
            x_ori = inputs[index]
            _, _, v = _qkv(blk, x_ori)
            heads = blk.attn.num_heads
            d = v.shape[-1] // heads
            outs = []
            for hd in range(heads):
                vh = v[..., hd * d:(hd + 1) * d]
                outs.append(torch.softmax(vh @ vh.transpose(-1, -2) * d ** -0.5, dim=-1) @ vh)
            new = new + blk.attn.out_proj(torch.cat(outs, dim=-1))
        tokens = torch.cat([final[:, :1], new[:, 1:]], dim=1)
        return visual.ln_post(tokens) @ visual.proj


def authors_feature_surgery(image_features, text_features):
    """The authors' clip_feature_surgery (class set = the prompts), written as they write it."""
    prob = image_features[:, :1, :] @ text_features.t()
    prob = (prob * 2).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    b, n_t, n_i, c = image_features.shape[0], text_features.shape[0], image_features.shape[1], image_features.shape[2]
    feats = image_features.reshape(b, n_i, 1, c) * text_features.reshape(1, 1, n_t, c)
    feats *= w.reshape(1, 1, n_t, 1)
    redundant = feats.mean(2, keepdim=True)
    return (feats - redundant).sum(-1)  # (B, N, K)


def test_clip_surgery_equals_authors_dual_path_and_feature_surgery(tiny, pixels):
    targets = text_targets(tiny, PROMPTS)
    assert default_depth(12) == 6
    for depth in (1, 2):
        ex = ge.explain_image(tiny, pixels, PROMPTS, method="clip_surgery", depth=depth)
        features = F.normalize(literal_surgery_features(tiny.model, pixels, depth), dim=-1)
        expected = torch.cat([authors_feature_surgery(features[b:b + 1], targets) for b in range(2)])
        expected = expected[:, 1:].transpose(1, 2)
        assert (ex.maps - expected.reshape(ex.maps.shape)).abs().max() <= TOL


def test_clip_surgery_with_a_class_set_and_single_prompt(tiny, pixels):
    classes = text_targets(tiny, PROMPTS)
    one = ge.explain_image(tiny, pixels, PROMPTS[1], method="clip_surgery", surgery_targets=classes)
    all_three = ge.explain_image(tiny, pixels, PROMPTS, method="clip_surgery")
    assert (one.maps[:, 0] - all_three.maps[:, 1]).abs().max() <= TOL
    from gradeclip_utils.methods import clip_surgery  # the class-set form of one target alone cancels out

    with pytest.raises(ValueError, match="surgery_targets"):
        clip_surgery.image_maps(tiny.adapter, pixels, classes[1:2])


def test_rise_masks_are_seeded_and_shaped():
    a = generate_masks(50, (48, 40), cells=8, p=0.5, seed=3)
    b = generate_masks(50, (48, 40), cells=8, p=0.5, seed=3)
    c = generate_masks(50, (48, 40), cells=8, p=0.5, seed=4)
    assert a.shape == (50, 48, 40) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert abs(float(generate_masks(2000, (32, 32), seed=0).mean()) - 0.5) < 0.02


@pytest.mark.parametrize("centre", [False, True])
def test_rise_equals_literal_sum_over_masks(tiny, pixels, centre):
    targets = text_targets(tiny, PROMPTS)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method="rise", masks=24, mask_batch=10, seed=1, p=0.4,
                          centre=centre)
    masks = generate_masks(24, (48, 48), p=0.4, seed=1)
    expected = torch.zeros(2, 3, 48, 48)
    with torch.no_grad():
        for b in range(2):
            for k in range(3):
                scores = [cos(tiny.model.encode_image((pixels[b] * masks[n])[None])[0], targets[k]) for n in range(24)]
                mean = sum(scores) / 24 if centre else 0.0
                for n in range(24):
                    expected[b, k] += (scores[n] - mean) * masks[n]
    expected /= 24 * 0.4
    assert ex.maps.shape == (2, 3, 48, 48)
    assert (ex.maps - expected).abs().max() <= TOL


def test_rise_recovers_the_region_a_score_reads():
    """Analytic case: S(image) = mean of the image over a fixed region R, so that the RISE saliency is
    E[mask * mean_R(mask)] / p: higher inside R than outside."""

    class RegionAdapter:
        def encode_image(self, x):
            value = x[:, 0, 8:16, 8:16].mean(dim=(-1, -2))
            return torch.stack([value, torch.ones_like(value)], dim=-1)

    from gradeclip_utils.methods import rise

    pixels = torch.ones(1, 3, 32, 32)
    out = rise.image_maps(RegionAdapter(), pixels, torch.tensor([[1.0, 0.0]]), masks=2000, cells=4, seed=0)
    saliency = out.maps[0, 0]
    inside = saliency[8:16, 8:16].mean()
    far = torch.cat([saliency[24:, :].flatten(), saliency[:, 24:].flatten()]).mean()
    assert inside > far + 0.05


def test_m2ib_capacity_is_gaussian_kl():
    lam = torch.tensor([0.5, 0.9, 0.99])
    h = torch.tensor([2.0, -1.0, 0.3])
    mu, s2 = lam * h, (1 - lam) ** 2
    expected = 0.5 * (mu ** 2 + s2 - 1 - torch.log(s2))
    assert (capacity(h, lam) - expected).abs().max() <= 1e-6
    assert default_layer(12) == 9 and default_layer(4) == 2


def literal_m2ib(hidden, target, finish, noise, beta, lr, steps, clamp=False, fit=None):
    """One pair's bottleneck, literally: Adam on alpha, capacity of the last step (``clamp``: the older
    IBA code's clamp of the log variance to [-10, 10], for contrast; ``fit(embedding)``: the explained score
    of the pair, by default the cosine with ``target``)."""
    alpha = torch.full_like(hidden, 5.0, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    for step in range(steps):
        optimiser.zero_grad()
        lam = torch.sigmoid(alpha)
        # M2IB's InformationBottleneck: no clamp of the log variance (commented out in its iba.py)
        var = (1 - lam) ** 2
        if clamp:
            var = torch.log(var).clamp(-10, 10).exp()
        kl = -0.5 * (1 + torch.log(var) - (hidden * lam) ** 2 - var)
        fits = []
        for sample in noise[step]:
            z = hidden * lam + var.sqrt() * sample
            fits.append(cos(finish(z[None])[0], target) if fit is None else fit(finish(z[None])[0]))
        loss = beta * kl.mean() - torch.stack(fits).mean()
        loss.backward()
        optimiser.step()
        last = kl.detach()
    return last


def m2ib_literal_setup(tiny, pixels):
    """The tokens entering block 2 (M2IB's ib_layer=1 bottleneck) and the literal rest of the tower."""
    blocks = tiny.model.visual.transformer.resblocks
    visual = tiny.model.visual
    with torch.no_grad():
        _, inputs, _, _ = literal_image(tiny.model, pixels)

    def finish(z):
        x, _, _ = literal_tower(blocks[2:], z)
        return visual.ln_post(x[:, 0]) @ visual.proj

    return inputs[2], finish


def test_m2ib_image_equals_per_pair_literal_optimisation(tiny, pixels):
    targets = text_targets(tiny, PROMPTS[:2])
    steps, samples, seed = 3, 2, 7
    ex = ge.explain_image(tiny, pixels, PROMPTS[:2], method="m2ib", ib_layer=1, steps=steps, samples=samples,
                          seed=seed, beta=0.1, lr=0.5)
    hidden, finish = m2ib_literal_setup(tiny, pixels)

    generator = torch.Generator().manual_seed(seed)  # one draw per step, the same for every pair
    noise = [torch.randn(samples, *hidden.shape[1:], generator=generator) for _ in range(steps)]
    with torch.enable_grad():
        for b in range(2):
            for k in range(2):
                kl = literal_m2ib(hidden[b], targets[k], finish, noise, 0.1, 0.5, steps)
                expected = kl.sum(-1)[1:].reshape(grid_of(tiny.model, pixels))
                assert (ex.maps[b, k] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))


def test_m2ib_map_of_a_pair_does_not_depend_on_the_rest_of_the_call(tiny, pixels):
    """The default optimisation (10 steps, 10 samples): an image alone, first or second of a batch, and
    against one or two targets, gets the same map (its noise is its own, from the seed)."""
    both = ge.explain_image(tiny, pixels, PROMPTS[:2], method="m2ib")
    alone = ge.explain_image(tiny, pixels[1:], PROMPTS[1], method="m2ib")
    swapped = ge.explain_image(tiny, pixels.flip(0), PROMPTS[1::-1], method="m2ib")
    assert float(alone.maps.abs().max()) > 0
    assert torch.allclose(both.maps[1, 1], alone.maps[0, 0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(both.maps, swapped.maps.flip(0).flip(1), rtol=1e-5, atol=1e-6)


def test_m2ib_paired_mode_explains_image_b_against_target_b(tiny, pixels):
    targets = text_targets(tiny, PROMPTS[:2])
    options = dict(ib_layer=1, steps=3, samples=2, seed=7)
    out = get_image_method("m2ib")(tiny.adapter, pixels, targets, paired=True, **options)
    assert out.maps.shape == (2, 1, 6, 6) and out.scores.shape == (2, 1)
    hidden, finish = m2ib_literal_setup(tiny, pixels)

    generator = torch.Generator().manual_seed(7)
    noise = [torch.randn(2, *hidden.shape[1:], generator=generator) for _ in range(3)]
    with torch.enable_grad():
        for b in range(2):
            kl = literal_m2ib(hidden[b], targets[b], finish, noise, 0.1, 1.0, 3)
            expected = kl.sum(-1)[1:].reshape(6, 6)
            assert (out.maps[b, 0] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))
            assert abs(float(out.scores[b, 0]) - float(cos(finish(hidden[b:b + 1])[0], targets[b]).detach())) <= TOL
    with pytest.raises(ValueError, match="one target per image"):
        get_image_method("m2ib")(tiny.adapter, pixels, targets[:1], paired=True, **options)


def test_m2ib_text_equals_per_pair_literal_optimisation(tiny, pixels):
    texts = ["a red circle", "three green stars"]
    tokens = tiny.tokenize(texts)
    images = image_targets(tiny, pixels)
    steps, samples, seed = 2, 2, 3
    out = get_text_method("m2ib")(tiny.adapter, tokens, images, ib_layer=0, steps=steps, samples=samples,
                                  seed=seed)
    model = tiny.model
    mask = model.attn_mask[:tokens.shape[1], :tokens.shape[1]]
    with torch.no_grad():
        _, inputs, _, eos = literal_text(model, tokens)
    hidden = inputs[1]
    generator = torch.Generator().manual_seed(seed)
    noise = [torch.randn(samples, *hidden.shape[1:], generator=generator) for _ in range(steps)]
    with torch.enable_grad():
        for b in range(2):
            for k in range(2):
                def finish(z, k=k):
                    x, _, _ = literal_tower(model.transformer.resblocks[1:], z, mask)
                    return model.ln_final(x)[:, int(eos[k])] @ model.text_projection

                kl = literal_m2ib(hidden[k], images[b], finish, noise, 0.1, 1.0, steps)
                expected = kl.sum(-1)
                assert (out.relevance[b, k] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("method", BASELINES)
def test_every_baseline_returns_the_common_result(tiny, method):
    options = {"masks": 16} if method == "rise" else {"steps": 1, "samples": 1} if method == "m2ib" else {}
    pixels = torch.randn(3, 3, 48, 48)
    ex = ge.explain_image(tiny, pixels, PROMPTS, method=method, **options)
    assert ex.maps.shape == (3, 3, *((48, 48) if method == "rise" else (6, 6)))
    with torch.no_grad():
        reference = F.normalize(tiny.model.encode_image(pixels), dim=-1) @ text_targets(tiny, PROMPTS).T
    assert (ex.scores - reference).abs().max() <= TOL
    assert ex.settings["method"] == method
    wide = ge.explain_image(tiny, torch.randn(2, 3, 32, 48), PROMPTS, method=method, **options)
    assert wide.maps.shape == (2, 3, *((32, 48) if method == "rise" else (4, 6)))
    assert torch.isfinite(wide.maps).all()
    assert wide.heatmaps().shape == (2, 3, 32, 48)


def test_baselines_on_vit_b16_equal_literal_computations(vit_b16):
    """The paper's architecture (12 blocks of 12 heads, 14 x 14 patches; realistic random weights): raw
    attention, Grad-CAM, GAME on the last block and MaskCLIP against the literal computations above."""
    model = vit_b16.model
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = ["a dog", "a cat"]
    targets = text_targets(vit_b16, prompts)
    maps = {method: ge.explain_image(vit_b16, pixels, prompts, method=method).maps[0]
            for method in ("raw_attention", "grad_cam", "game_last", "maskclip")}
    visual = model.visual
    scale = model.logit_scale.detach().exp()
    with torch.enable_grad():
        embedding, inputs, probs, _ = literal_image(model, pixels)
        expected = {"raw_attention": torch.stack(probs[-1]).mean(0)[0, 0, 1:].reshape(14, 14).expand(2, 14, 14)}
        cams, games = [], []
        for k in range(2):
            s = cos(embedding[0], targets[k])
            grad = torch.autograd.grad(s, inputs[-1], retain_graph=True)[0]
            cams.append(torch.relu(inputs[-1][0, 1:].detach() @ grad[0, 1:].mean(dim=0)).reshape(14, 14))
            games.append(literal_game(lambda: scale * cos(embedding[0], targets[k]), probs, 11, (0, 0),
                                      197)[1:].reshape(14, 14))  # GAME differentiates the logit
        expected["grad_cam"], expected["game_last"] = torch.stack(cams), torch.stack(games).float()
    with torch.no_grad():
        blk, x = visual.transformer.resblocks[-1], inputs[-1].detach()
        u = x[0, 1:] + blk.attn.out_proj(_qkv(blk, x)[2][0, 1:])
        u = u + blk.mlp(blk.ln_2(u))
        features = F.normalize(visual.ln_post(u) @ visual.proj, dim=-1)
        expected["maskclip"] = (features @ targets.T).T.reshape(2, 14, 14)
    for method, value in expected.items():
        assert value.abs().max() > 1e-4, method
        assert (maps[method] - value).abs().max() <= TOL, method


@pytest.mark.parametrize("method", ["raw_attention", "game", "m2ib"])
def test_text_baselines_through_explain_text(tiny, method):
    options = {"steps": 1, "samples": 1} if method == "m2ib" else {}
    ex = ge.explain_text(tiny, torch.randn(2, 3, 48, 48), ["a red circle", "two blue squares"], method=method,
                         layers=1, **options)
    assert ex.word_importance.shape[:2] == (2, 2)
    sums = ex.word_importance.sum(dim=-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# A model with non-zero biases and non-identity LayerNorms everywhere (as trained weights have), for the
# comparisons with the originals' equations below.

def make_biased_clip(seed=2, **kwargs):
    from conftest import make_tiny_clip

    loaded = make_tiny_clip(seed=seed, **kwargs)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 1 and ("ln" in name or "norm" in name):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
    return loaded


@pytest.fixture(scope="module")
def biased():
    return make_biased_clip()


def test_biased_model_has_biases_and_layer_norm_gains(biased):
    blk = biased.model.visual.transformer.resblocks[-1]
    assert blk.attn.in_proj_bias.abs().min() > 0 and blk.attn.out_proj.bias.abs().min() > 0
    assert (blk.ln_1.weight - 1).abs().max() > 0.05 and biased.model.visual.ln_post.bias.abs().max() > 0.05


def test_trace_keeps_every_explained_blocks_output_with_its_graph(biased, pixels):
    adapter = biased.adapter
    trace = adapter.trace_image(pixels, [1, 2], keep_block_outputs=True)
    with torch.no_grad():
        _, inputs, _, final = literal_image(biased.model, pixels)
    assert sorted(trace.block_outputs) == [1, 2]
    assert (trace.block_outputs[1] - inputs[2]).abs().max() <= TOL
    assert trace.block_outputs[2].shape == final.shape and (trace.block_outputs[2] - final).abs().max() <= TOL
    # the last block's output keeps its graph: its class-token row is what the embedding reads
    grad, = torch.autograd.grad(trace.embedding.sum(), [trace.block_outputs[2]])
    assert grad[:, 1:].abs().max() == 0 and grad[:, 0].abs().max() > 0
    assert adapter.trace_image(pixels, [2]).block_outputs == {}
    texts = biased.tokenize(["a red circle", "two stars"])
    text_trace = adapter.trace_text(texts, [0], keep_block_outputs=True)
    with torch.no_grad():
        _, text_inputs, _, _ = literal_text(biased.model, texts)
    assert (text_trace.block_outputs[0] - text_inputs[1]).abs().max() <= TOL
    assert adapter.logit_scale == pytest.approx(float(biased.model.logit_scale.detach().exp()))


# ---------------------------------------------------------------- each baseline as its original computes it
def test_m2ib_has_no_clamp_as_in_its_own_code(biased, pixels):
    """M2IB's iba.py computes the capacity and the noise from log((1 - lambda)^2) unclamped (the older IBA
    clamp to [-10, 10] is commented out there); with alpha starting at 5 the clamp would bind at once."""
    targets = text_targets(biased, PROMPTS[:1])
    steps, samples, seed = 3, 2, 4
    ex = ge.explain_image(biased, pixels[:1], PROMPTS[:1], method="m2ib", ib_layer=1, steps=steps,
                          samples=samples, seed=seed)
    hidden, finish = m2ib_literal_setup(biased, pixels[:1])
    generator = torch.Generator().manual_seed(seed)
    noise = [torch.randn(samples, 1, *hidden.shape[1:], generator=generator)[:, 0] for _ in range(steps)]
    with torch.enable_grad():
        kl = literal_m2ib(hidden[0], targets[0], finish, noise, 0.1, 1.0, steps)
    expected = kl.sum(-1)[1:].reshape(grid_of(biased.model, pixels))
    assert (ex.maps[0, 0] - expected).abs().max() <= TOL * float(expected.abs().max())
    assert float(torch.log((1 - torch.sigmoid(torch.tensor(5.0))) ** 2)) < -10  # the clamp would bind at once
    with torch.enable_grad():
        clamped = literal_m2ib(hidden[0], targets[0], finish, noise, 0.1, 1.0, steps, clamp=True)
    clamped = clamped.sum(-1)[1:].reshape(expected.shape)
    assert (ex.maps[0, 0] - clamped).abs().max() > 100 * TOL * float(expected.abs().max())


def test_game_over_all_blocks_differentiates_the_logit_and_the_cosine_is_an_option(biased, pixels):
    targets = text_targets(biased, PROMPTS)
    logit = ge.explain_image(biased, pixels, PROMPTS, method="game")
    cosine = ge.explain_image(biased, pixels, PROMPTS, method="game", target="cosine")
    scale = float(biased.model.logit_scale.detach().exp())
    grid = grid_of(biased.model, pixels)
    with torch.enable_grad():
        embedding, _, probs, _ = literal_image(biased.model, pixels)
        size = probs[0][0].shape[-1]
        for b in range(2):
            for k in range(3):
                for out, factor in ((logit, scale), (cosine, 1.0)):
                    row = literal_game(lambda: factor * cos(embedding[b], targets[k]), probs, 0, (b, 0), size)
                    expected = row[1:].reshape(grid).float()
                    assert (out.maps[b, k] - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))
    # over several blocks R is not linear in the gradient's scale: the two targets give other maps
    assert not torch.allclose(logit.maps, scale * cosine.maps, rtol=1e-3)
    last = ge.explain_image(biased, pixels, PROMPTS, method="game_last")
    last_cosine = ge.explain_image(biased, pixels, PROMPTS, method="game_last", target="cosine")
    assert torch.allclose(last.maps, scale * last_cosine.maps, rtol=1e-4, atol=1e-6)  # one block: a rescaling
    with pytest.raises(ValueError, match="target must be one of"):
        ge.explain_image(biased, pixels, PROMPTS, method="game", target="probability")


def test_clip_surgery_single_text_form_subtracts_the_redundant_feature(biased, pixels):
    """The demo's "CLIP Surgery for a single text": clip_feature_surgery(image_features, text_features,
    redundant_features) = image_features @ (text_features - redundant_features).t()."""
    targets = text_targets(biased, PROMPTS[:1])
    redundant = text_targets(biased, [""])
    as_row = ge.explain_image(biased, pixels, PROMPTS[0], method="clip_surgery", redundant=redundant)
    for depth in (None, 1):
        options = {} if depth is None else {"depth": depth}
        ex = ge.explain_image(biased, pixels, PROMPTS[0], method="clip_surgery", redundant=redundant[0], **options)
        image_features = F.normalize(literal_surgery_features(biased.model, pixels, depth or 2), dim=-1)
        similarity = image_features @ (targets - redundant).t()  # (B, N, 1), written as the authors write it
        expected = similarity[:, 1:, 0].reshape(2, *grid_of(biased.model, pixels))
        assert (ex.maps[:, 0] - expected).abs().max() <= TOL
        if depth is None:
            assert torch.equal(as_row.maps, ex.maps)  # a (1, D) or a (D,) redundant feature
    assert default_depth(3) == 2
    with pytest.raises(ValueError, match="not both"):
        ge.explain_image(biased, pixels, PROMPTS[0], method="clip_surgery", redundant=redundant,
                         surgery_targets=text_targets(biased, PROMPTS))
    # one prompt and neither form named: the demo's single-text form with the empty string's embedding
    default = ge.explain_image(biased, pixels, PROMPTS[0], method="clip_surgery")
    assert torch.equal(default.maps, as_row.maps) and default.settings["surgery_form"] == "single-text (empty string)"
    assert ge.explain_image(biased, pixels, PROMPTS, method="clip_surgery").settings["surgery_form"] == "class set"
    from gradeclip_utils.methods import clip_surgery

    with pytest.raises(ValueError, match="redundant=gradeclip_utils.encode_texts"):  # the method itself, called bare
        clip_surgery.image_maps(biased.adapter, pixels, targets)


def test_raw_attention_authors_variant_is_the_single_head_recomputed_block(biased, pixels):
    """The Grad-ECLIP authors' clip_encode_dense: attention_layer(q, k, v, 1) (one head of width C, scale
    C ** -0.5) on the last block, and its class-token row over the patches (attn[0, :1, 1:])."""
    ex = ge.explain_image(biased, pixels, PROMPTS, method="raw_attention", variant="authors")
    model_variant = ge.explain_image(biased, pixels, PROMPTS, method="raw_attention")
    blk = biased.model.visual.transformer.resblocks[-1]
    with torch.no_grad():
        _, inputs, _, _ = literal_image(biased.model, pixels)
        q, k, _ = _qkv(blk, inputs[-1])
        attention = torch.softmax(q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2), dim=-1)
        expected = attention[:, 0, 1:].reshape(2, *grid_of(biased.model, pixels))
        reference = F.normalize(biased.model.encode_image(pixels), dim=-1) @ text_targets(biased, PROMPTS).T
    for k_ in range(3):
        assert (ex.maps[:, k_] - expected).abs().max() <= TOL
    assert (model_variant.maps[:, 0] - expected).abs().max() > 1e-3  # another map than the mean over heads
    assert (ex.scores - reference).abs().max() <= TOL  # the model's own scores
    with pytest.raises(ValueError, match="variant must be one of"):
        ge.explain_image(biased, pixels, PROMPTS, method="raw_attention", variant="chefer")


def test_maskclip_authors_variant_multiplies_by_the_out_proj_key_cosine(biased, pixels):
    """The Grad-ECLIP authors' mask_clip: cos(v_final_i, t) * cos(k_out_cls, k_out_i), with
    k_out = out_proj(k) (weight and bias) of the last block."""
    targets = text_targets(biased, PROMPTS)
    ex = ge.explain_image(biased, pixels, PROMPTS, method="maskclip", variant="authors")
    visual = biased.model.visual
    blk = visual.transformer.resblocks[-1]
    grid = grid_of(biased.model, pixels)
    with torch.no_grad():
        _, inputs, _, _ = literal_image(biased.model, pixels)
        x = inputs[-1]
        _, k, v = _qkv(blk, x)
        k_out = blk.attn.out_proj(k)
        v_final = x + blk.attn.out_proj(v)
        v_final = visual.ln_post(v_final + blk.mlp(blk.ln_2(v_final))) @ visual.proj
        for b in range(2):
            for i in range(1, x.shape[1]):
                r, c = divmod(i - 1, grid[1])
                key = float(cos(k_out[b, 0], k_out[b, i]))
                for t in range(3):
                    expected = float(cos(v_final[b, i], targets[t])) * key
                    assert abs(float(ex.maps[b, t, r, c]) - expected) <= TOL


def test_grad_cam_authors_variant_averages_the_gradient_over_all_tokens(biased, pixels):
    """The Grad-ECLIP authors' grad_cam: grad.mean(0) over every token entering the last block (the class
    token included), map = ReLU(sum_c alpha_c x_i[c]) over the patches, the score from their
    clip_encode_dense forward (the last block recomputed with one head of width C)."""
    targets = text_targets(biased, PROMPTS[:2])
    ex = ge.explain_image(biased, pixels, PROMPTS[:2], method="grad_cam", variant="authors")
    grid = grid_of(biased.model, pixels)
    visual = biased.model.visual
    blk = visual.transformer.resblocks[-1]
    with torch.enable_grad():
        _, inputs, _, _ = literal_image(biased.model, pixels)
        q, k, v = _qkv(blk, inputs[-1])
        attention = torch.softmax(q * q.shape[-1] ** -0.5 @ k.transpose(-1, -2), dim=-1)
        x = inputs[-1] + blk.attn.out_proj(attention @ v)
        x = x + blk.mlp(blk.ln_2(x))
        embedding = visual.ln_post(x[:, 0]) @ visual.proj
        for b in range(2):
            for k in range(2):
                grad, = torch.autograd.grad(cos(embedding[b], targets[k]), [inputs[-1]], retain_graph=True)
                alpha = grad[b].mean(dim=0)
                expected = torch.relu(inputs[-1][b, 1:].detach() @ alpha).reshape(grid)
                assert (ex.maps[b, k] - expected).abs().max() <= TOL


def literal_legrad(model, pixels, targets, first):
    """LeWrapper.compute_legrad_clip, literally: per block l >= first, f_l = normalize(ln_post(mean over
    tokens of the block's output) @ proj), s = t . f_l, grad of s w.r.t. the block's attention maps
    ((b h) n m), ReLU, mean over heads and over the query rows, patch keys; summed over the blocks."""
    visual = model.visual
    with torch.enable_grad():
        _, inputs, probs, final = literal_image(model, pixels)
        outputs = inputs[1:] + [final]
        grid = grid_of(model, pixels)
        maps = torch.zeros(pixels.shape[0], targets.shape[0], *grid)
        for b in range(pixels.shape[0]):
            for k in range(targets.shape[0]):
                for layer in range(first, len(probs)):
                    feature = F.normalize(visual.ln_post(outputs[layer][b].mean(dim=0)) @ visual.proj, dim=-1)
                    s = targets[k] @ feature
                    grads = torch.autograd.grad(s, probs[layer], retain_graph=True)
                    grad = torch.stack([g[b] for g in grads]).clamp(min=0)  # (heads, N, N)
                    maps[b, k] += grad.mean(dim=0).mean(dim=0)[1:].reshape(grid)
    return maps


@pytest.mark.parametrize("layer_index,first", [(-2, 1), (0, 0)])
def test_legrad_equals_the_original_equations(biased, pixels, layer_index, first):
    targets = text_targets(biased, PROMPTS)
    ex = ge.explain_image(biased, pixels, PROMPTS, method="legrad", layer_index=layer_index, chunk=2)
    expected = literal_legrad(biased.model, pixels, targets, first)
    assert expected.abs().max() > 1e-4
    assert (ex.maps - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max()))
    reference = F.normalize(biased.model.encode_image(pixels), dim=-1) @ targets.T
    assert (ex.scores - reference).abs().max() <= TOL
