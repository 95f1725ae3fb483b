"""Hugging Face transformers SigLIP (``SiglipModel``): the attention-pool head explained as the open_clip/timm
SigLIP probe, the bidirectional text tower pooled at the last position, SigLIP's own scores (the logit with its
bias, each pair's sigmoid probability), its tokenizer's padding and words, loading a saved folder offline.

Models are small ``SiglipModel`` s built from a config with realistic random weights (``support.siglip``;
the head's probe N(0, 0.5)). Maps are checked against a literal implementation of the equations of docs/method.md
sections 2 and 5.2 written below (per image, per prompt, every head in its own iteration, one backward pass per
prompt), the trunk run by the model's own code; and against the open_clip/timm SigLIP family on the same weights
(copied into a CustomTextCLIP with a timm SigLIP trunk). The tokenizer (``support.siglip``) is a small
SentencePiece-style (Unigram, U+2581 word starts) ``tokenizers`` tokenizer with SigLIP's special tokens (end and
padding ``</s>``, no start).
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.adapters import UnsupportedMethodError, UnsupportedModelError, get_adapter
from gradeclip_utils.explain import method_support
from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS
from gradeclip_utils.methods.scores import scale_refusal

from support.families import relative
from support.reference import loosen, pooled_heads
from support.siglip import CONTEXT, HEADS, PATCH, SIZE, VOCAB, WIDTH, build, config, hf_tokenizer

transformers = pytest.importorskip("transformers")

TOL = 1e-5
NATIVE = (48, 80)
PROMPTS = ["a red circle", "a photo of a dog", "two blue squares"]
FAST = {"rise": {"masks": 32, "mask_batch": 32}, "m2ib": {"steps": 2, "samples": 2}}


@pytest.fixture(scope="module")
def loaded():
    return ge.wrap_model(build(), tokenizer=hf_tokenizer(), name="tiny-siglip")


def pixels(resolution: str = "model", count: int = 2, seed: int = 4) -> torch.Tensor:
    shape = (SIZE, SIZE) if resolution == "model" else NATIVE
    return torch.randn(count, 3, *shape, generator=torch.Generator().manual_seed(seed))


def unit(n: int, seed: int = 1) -> torch.Tensor:
    return F.normalize(torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------- the literal code
def _cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def literal_score(model, f, t, score):
    logit = model.logit_scale.exp().double() * _cos(f, t).double() + model.logit_bias.double()
    return {"logit": logit, "probability": torch.sigmoid(logit), "cosine": _cos(f, t)}[score]


def literal_head(model, images, targets, official=False, qk="raw", score="logit"):
    """Literal Grad-ECLIP on SigLIP's attention-pool head, per image, per prompt, every head in its own iteration:
    the trunk's tokens x from the model's own forward (``hidden_states[-1]``, positions interpolated by the model
    at another size); o = concat_h softmax(k_i^h . q^h / sqrt(d)) v_i^h with q = W_q probe + b_q, k and v the
    in-projections of post_layernorm(x); f = out_proj(o) + mlp(layernorm(out_proj(o))); w = dS/do;
    l = minmax cos(q, k_i); H_i = ReLU(sum_c w_c l_i v_i[c])."""
    vision = model.vision_model
    head, attention = vision.head, vision.head.attention
    other = tuple(images.shape[-2:]) != (SIZE, SIZE)
    with torch.no_grad():
        x = vision(pixel_values=images, interpolate_pos_encoding=other, output_hidden_states=True).hidden_states[-1]
    grid = (images.shape[-2] // PATCH, images.shape[-1] // PATCH)
    w, b = attention.in_proj_weight, attention.in_proj_bias
    heads = 1 if official else HEADS
    maps = torch.zeros(images.shape[0], len(targets), grid[0] * grid[1])
    scores = torch.zeros(images.shape[0], len(targets), dtype=torch.float64)
    with torch.enable_grad():
        for i in range(images.shape[0]):
            tokens = vision.post_layernorm(x[i])
            q = head.probe[0, 0] @ w[:WIDTH].T + b[:WIDTH]
            k = tokens @ w[WIDTH:2 * WIDTH].T + b[WIDTH:2 * WIDTH]
            v = tokens @ w[2 * WIDTH:].T + b[2 * WIDTH:]
            o = pooled_heads(q, k, v, heads).detach().requires_grad_(True)
            y = o @ attention.out_proj.weight.T + attention.out_proj.bias
            f = y + head.mlp(head.layernorm(y))
            loose = loosen(q.detach(), k.detach(), qk, attention.out_proj)
            for t in range(len(targets)):
                s = literal_score(model, f, targets[t], score)
                scores[i, t] = s.detach()
                (grad,) = torch.autograd.grad(s, [o], retain_graph=True)
                for p in range(grid[0] * grid[1]):
                    maps[i, t, p] = torch.relu((grad.float() * loose[p] * v[p].detach()).sum())
    return maps.reshape(images.shape[0], len(targets), *grid), scores.float()


# -------------------------------------------------------------------------------- recognition
def test_the_model_is_read_by_the_siglip_family(loaded):
    adapter = loaded.adapter
    assert loaded.family == "Hugging Face SigLIP" and adapter.num_image_blocks == 1 and adapter.num_text_blocks == 2
    assert adapter.embed_dim == WIDTH and adapter.image_size == (SIZE, SIZE) and adapter.context_length == CONTEXT
    assert loaded.normalization == ((0.5,) * 3, (0.5,) * 3)  # SigLIP's processor's mean and std, not CLIP's


def test_embeddings_equal_the_models_own_forward(loaded):
    adapter, model = loaded.adapter, loaded.model
    for resolution in ("model", "native"):
        images = pixels(resolution)
        other = resolution != "model"
        with torch.no_grad():
            want = model.vision_model(pixel_values=images, interpolate_pos_encoding=other).pooler_output
        assert relative(adapter.encode_image(images), want) < TOL
    tokens = loaded.tokenize(PROMPTS)
    assert tokens.shape == (3, CONTEXT) and int(tokens[0, -1]) == 1  # padded to the context length with '</s>'
    with torch.no_grad():
        want = model.text_model(input_ids=tokens).pooler_output
    assert relative(adapter.encode_text(tokens), want) < TOL


# --------------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("resolution", ["model", "native"])
def test_scores_are_the_models_own_logits_and_sigmoid(loaded, resolution):
    model = loaded.model
    images = pixels(resolution)
    tokens = loaded.tokenize(PROMPTS)
    with torch.no_grad():
        own = model(input_ids=tokens, pixel_values=images, interpolate_pos_encoding=resolution != "model")
    logit = ge.explain_image(loaded, images, PROMPTS, resolution="model" if resolution == "model" else "native")
    assert logit.settings["score"] == "logit"  # the default
    assert relative(logit.scores, own.logits_per_image) < TOL
    probability = ge.explain_image(loaded, images, PROMPTS, score="probability")
    assert relative(probability.scores, torch.sigmoid(own.logits_per_image)) < TOL
    assert float(probability.scores.sum(dim=1).sub(1).abs().min()) > 1e-3  # each pair on its own: no softmax
    one = ge.explain_image(loaded, images, PROMPTS[:1], score="probability")  # one prompt has a probability too
    assert relative(one.scores, torch.sigmoid(own.logits_per_image[:, :1])) < TOL
    assert float(one.maps.abs().max()) > 0
    cosine = ge.explain_image(loaded, images, PROMPTS, score="cosine")
    assert relative(cosine.scores, (own.logits_per_image - model.logit_bias) / model.logit_scale.exp()) < TOL


def test_word_importance_scores_are_the_models_own(loaded):
    model = loaded.model
    images = pixels("model")
    tokens = loaded.tokenize(PROMPTS)
    with torch.no_grad():
        own = model(input_ids=tokens, pixel_values=images).logits_per_image
    for score, want in (("logit", own), ("probability", torch.sigmoid(own))):
        got = ge.explain_text(loaded, images, PROMPTS, score=score, resolution="model", layers=2)
        assert relative(got.scores, want) < TOL
    single = ge.explain_text(loaded, images, PROMPTS[:1], score="probability", resolution="model", layers=2)
    assert relative(single.scores, torch.sigmoid(own[:, :1])) < TOL


def test_word_importance_is_over_sentencepiece_words(loaded):
    got = ge.explain_text(loaded, pixels("model"), PROMPTS, resolution="model", layers=2)
    assert got.words == [["a", "red", "circle"], ["a", "photo", "of", "a", "dog"], ["two", "blue", "squares"]]
    assert got.tokens[2] == ["two</w>", "blue</w>", "square", "s</w>"]  # no start token: the first word is kept
    assert got.settings["score"] == "logit"  # the model's default, as for explain_image
    sums = got.word_importance.sum(dim=-1)  # each (image, text) normalised to 1, or all zero after the ReLU
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0)) and float(sums.sum()) >= 3


# ---------------------------------------------------------------------------------- Grad-ECLIP
@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("resolution", ["model", "native"])
def test_head_maps_equal_the_literal_equations(loaded, mode, qk, resolution):
    images, targets = pixels(resolution), unit(3)
    want, want_scores = literal_head(loaded.model, images, targets, mode == "official", qk)
    got = ge.explain_image(loaded, images, targets, mode=mode, qk=qk)
    assert got.maps.shape[-2:] == want.shape[-2:] and float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL
    if mode == "faithful":
        assert relative(got.scores, want_scores) < TOL


@pytest.mark.parametrize("score", ["probability", "cosine"])
def test_other_scores_maps_equal_the_literal_equations(loaded, score):
    images, targets = pixels("native"), unit(3)
    want, want_scores = literal_head(loaded.model, images, targets, score=score)
    got = ge.explain_image(loaded, images, targets, score=score)
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL and relative(got.scores, want_scores) < TOL


@pytest.mark.parametrize("bias", [30.0, -60.0])
def test_the_probabilitys_gradient_does_not_vanish(bias):
    """A pair whose logit is far from 0 (p rounds to 1 in float32 above about 17): the probability's maps are
    p (1 - p) = sigmoid(x) sigmoid(-x) times the logit's (Grad-ECLIP is linear in the gradient), not zero."""
    loaded = ge.wrap_model(build(seed=3, bias=bias), tokenizer=hf_tokenizer())
    images, targets = pixels("model", count=1), unit(2)
    logit = ge.explain_image(loaded, images, targets)
    probability = ge.explain_image(loaded, images, targets, score="probability")
    x = logit.scores.double()
    slope = (torch.sigmoid(x) * torch.sigmoid(-x)).float()
    assert float(slope.min()) > 0 and float(probability.maps.abs().max()) > 0
    assert relative(probability.maps, slope[..., None, None] * logit.maps) < TOL


# ------------------------------------------------------------------- the open_clip/timm SigLIP family
@contextlib.contextmanager
def trunk_overrides(**kwargs):
    timm = pytest.importorskip("timm")
    real = timm.create_model
    timm.create_model = functools.partial(real, **kwargs)
    try:
        yield
    finally:
        timm.create_model = real


@torch.no_grad()
def to_open_clip(model):
    """The same weights in open_clip's SigLIP (CustomTextCLIP, timm's SigLIP trunk pooled by its attention-pool
    probe, a text tower without causal mask pooled at the last position)."""
    pytest.importorskip("open_clip")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    with trunk_overrides(img_size=SIZE, depth=2, embed_dim=WIDTH, num_heads=HEADS):
        vision = CLIPVisionCfg(timm_model_name="vit_base_patch16_siglip_224", timm_model_pretrained=False,
                               timm_pool="map", timm_proj="none", image_size=SIZE)
        text = CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=HEADS, layers=2,
                           no_causal_mask=True, pool_type="last", proj_bias=True, norm_kwargs={"eps": 1e-6})
        other = CustomTextCLIP(embed_dim=WIDTH, vision_cfg=vision, text_cfg=text, init_logit_bias=0.0).eval()
    hv, ht = model.vision_model, model.text_model
    trunk = other.visual.trunk
    trunk.patch_embed.proj.load_state_dict(hv.embeddings.patch_embedding.state_dict())
    trunk.pos_embed.copy_(hv.embeddings.position_embedding.weight[None])
    for block, layer in zip(trunk.blocks, hv.encoder.layers):
        attn = layer.self_attn
        block.norm1.load_state_dict(layer.layer_norm1.state_dict())
        block.norm2.load_state_dict(layer.layer_norm2.state_dict())
        block.attn.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        block.attn.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        block.attn.proj.load_state_dict(attn.out_proj.state_dict())
        block.mlp.fc1.load_state_dict(layer.mlp.fc1.state_dict())
        block.mlp.fc2.load_state_dict(layer.mlp.fc2.state_dict())
    trunk.norm.load_state_dict(hv.post_layernorm.state_dict())
    pool, head = trunk.attn_pool, hv.head
    pool.latent.copy_(head.probe)
    w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
    pool.q.weight.copy_(w[:WIDTH]), pool.q.bias.copy_(b[:WIDTH])
    pool.kv.weight.copy_(w[WIDTH:]), pool.kv.bias.copy_(b[WIDTH:])
    pool.proj.load_state_dict(head.attention.out_proj.state_dict())
    pool.norm.load_state_dict(head.layernorm.state_dict())
    pool.mlp.fc1.load_state_dict(head.mlp.fc1.state_dict())
    pool.mlp.fc2.load_state_dict(head.mlp.fc2.state_dict())
    tt = other.text
    tt.token_embedding.load_state_dict(ht.embeddings.token_embedding.state_dict())
    tt.positional_embedding.copy_(ht.embeddings.position_embedding.weight)
    for block, layer in zip(tt.transformer.resblocks, ht.encoder.layers):
        attn = layer.self_attn
        block.ln_1.load_state_dict(layer.layer_norm1.state_dict())
        block.ln_2.load_state_dict(layer.layer_norm2.state_dict())
        block.attn.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        block.attn.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        block.attn.out_proj.load_state_dict(attn.out_proj.state_dict())
        block.mlp.c_fc.load_state_dict(layer.mlp.fc1.state_dict())
        block.mlp.c_proj.load_state_dict(layer.mlp.fc2.state_dict())
    tt.ln_final.load_state_dict(ht.final_layer_norm.state_dict())
    tt.text_projection.load_state_dict(ht.head.state_dict())
    other.logit_scale.copy_(model.logit_scale.reshape(other.logit_scale.shape))
    other.logit_bias.copy_(model.logit_bias.reshape(other.logit_bias.shape))
    return other


@pytest.fixture(scope="module")
def twins(loaded):
    other = to_open_clip(loaded.model)
    return loaded, ge.wrap_model(other, tokenizer=hf_tokenizer(), name="tiny-open_clip-siglip")


def test_the_open_clip_twin_is_the_same_model(twins):
    hf, oc = twins
    assert oc.family == "open_clip SigLIP"
    images, tokens = pixels("model"), hf.tokenize(PROMPTS)
    assert relative(oc.adapter.encode_image(images), hf.adapter.encode_image(images)) < TOL
    assert relative(oc.adapter.encode_text(tokens), hf.adapter.encode_text(tokens)) < TOL


@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
def test_maps_equal_the_open_clip_siglip_family_at_the_models_size(twins, mode, qk):
    hf, oc = twins
    images, targets = pixels("model"), unit(3)
    want = ge.explain_image(oc, images, targets, mode=mode, qk=qk, score="cosine")
    got = ge.explain_image(hf, images, targets, mode=mode, qk=qk, score="cosine")
    assert relative(got.maps, want.maps) < TOL and relative(got.scores, want.scores) < TOL


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_open_clip_siglip_gives_the_same_sigmoid_scores(twins, score):
    """open_clip's SigLIP carries the same logit bias: the same scores (its default the logit with the bias,
    the probability each pair's sigmoid, not a softmax over the prompts) and the same maps."""
    hf, oc = twins
    assert oc.adapter.score_names == hf.adapter.score_names and oc.adapter.logit_bias == hf.adapter.logit_bias
    images, targets = pixels("model"), unit(3)
    want = ge.explain_image(oc, images, targets, score=score)
    got = ge.explain_image(hf, images, targets, score=score)
    logits = hf.adapter.logit_scale * F.normalize(hf.adapter.encode_image(images), dim=-1) @ targets.T \
        + hf.adapter.logit_bias
    assert relative(want.scores, logits if score == "logit" else torch.sigmoid(logits)) < TOL
    assert relative(got.maps, want.maps) < TOL and relative(got.scores, want.scores) < TOL
    assert ge.explain_image(oc, images, targets).settings["score"] == "logit"  # the default


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "game", "grad_cam", "maskclip", "grad_eclip_no_spatial"])
def test_other_methods_equal_the_open_clip_siglip_family(twins, method):
    hf, oc = twins
    images, targets = pixels("model"), unit(2)
    if method not in IMAGE_METHODS:
        pytest.skip(f"{method} is not registered")
    want = ge.explain_image(oc, images, targets, method=method, score="cosine" if method != "game" else None)
    got = ge.explain_image(hf, images, targets, method=method, score="cosine" if method != "game" else None)
    assert relative(got.maps, want.maps) < TOL


def test_word_importance_equals_the_open_clip_siglip_family(twins):
    from gradeclip_utils.methods.grad_eclip import token_relevance

    hf, oc = twins
    tokens, targets = hf.tokenize(PROMPTS), unit(2, seed=5)
    want = token_relevance(oc.adapter, tokens, targets, layers=2)
    got = token_relevance(hf.adapter, tokens, targets, layers=2)
    assert float(want.relevance.abs().max()) > 0
    assert relative(got.relevance, want.relevance) < TOL and relative(got.scores, want.scores) < TOL


def test_maps_at_another_size_differ_from_timms_resampled_positions(twins):
    """The model interpolates positions bicubically without antialiasing, timm with it (another kernel): the
    families' maps at a non-square size are close but not equal (docs/method.md section 5.2 states by how much)."""
    hf, oc = twins
    targets = unit(3)
    for shape in (NATIVE, (96, 96)):
        images = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(9))
        want, got = ge.explain_image(oc, images, targets, score="cosine"), ge.explain_image(hf, images, targets, score="cosine")
        assert relative(got.scores, want.scores) < 0.5 and relative(got.maps, want.maps) > TOL


# ------------------------------------------------------------------------------- other methods
@pytest.mark.parametrize("method", sorted(IMAGE_METHODS))
def test_every_image_method_runs_or_is_refused_by_name_as_for_the_open_clip_family(twins, method):
    """What needs tokens after the head (ITSM, CLIP Surgery, M2IB, LeGrad) is refused with the probe's reason, as
    the open_clip SigLIP family refuses it; the rest runs."""
    loaded, oc = twins
    images, targets = pixels("native"), unit(2)
    refused = method_support(oc, method) is not None
    if refused:
        with pytest.raises(UnsupportedMethodError, match=f"{method} is not available for Hugging Face SigLIP models: "
                                                          ".*(probe|tokens)"):
            ge.explain_image(loaded, images, targets, method=method)
        return
    got = ge.explain_image(loaded, images, targets, method=method, **FAST.get(method, {}))
    assert torch.isfinite(got.maps).all() and float(got.maps.abs().max()) > 0


def _text_methods_with_scores() -> list[str]:
    from gradeclip_utils.methods import get_spec

    return sorted(m for m in TEXT_METHODS if "score" in get_spec(m).uses)  # raw attention explains no score


@pytest.mark.parametrize("method", _text_methods_with_scores())
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_every_text_method_runs_with_the_models_scores(loaded, method, score):
    from gradeclip_utils.methods import get_spec

    spec = get_spec(method)
    options = {"resolution": "model", **({"layers": 2} if "layers" in spec.uses else {}), **FAST.get(method, {})}
    got = ge.explain_text(loaded, pixels("model"), PROMPTS, method=method, score=score, **options)
    assert torch.isfinite(got.word_importance).all() and float(got.word_importance.abs().max()) > 0
    with torch.no_grad():
        own = loaded.model(input_ids=loaded.tokenize(PROMPTS), pixel_values=pixels("model")).logits_per_image
    assert relative(got.scores, own if score == "logit" else torch.sigmoid(own)) < TOL


# ------------------------------------------------------------------------------------- refusals
def test_bad_scores_are_refused_naming_the_models_scores(loaded):
    with pytest.raises(ValueError, match="score must be one of"):
        ge.explain_image(loaded, pixels("model"), PROMPTS, score="sigmoid")  # no model's score
    with pytest.raises(UnsupportedMethodError, match="'itm' is not a score of this model"):
        ge.explain_image(loaded, pixels("model"), PROMPTS, score="itm")  # BLIP's, not SigLIP's
    reason = scale_refusal("itm", loaded.adapter)
    assert "Hugging Face SigLIP" in reason and "'logit', 'probability', 'cosine', 'contrast'" in reason
    with pytest.raises(ValueError, match="raw_attention does not use the setting score"):
        ge.explain_image(loaded, pixels("model"), PROMPTS, method="raw_attention", score="probability")
    with pytest.raises(ValueError, match="contrast"):
        ge.explain_text(loaded, pixels("model"), PROMPTS, score="contrast")
    pairs = ge.explain_image(loaded, pixels("model"), [("a red circle", "a blue circle")], score="contrast")
    assert pairs.prompts == ["a red circle rather than a blue circle"]


def test_siglip2_naflex_and_headless_models_are_refused_by_name():
    siglip2 = transformers.Siglip2Model(transformers.Siglip2Config(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=CONTEXT),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_patches=16, patch_size=16)))
    with pytest.raises(UnsupportedModelError, match=r"Siglip2Model\) \(SigLIP 2's NaFlex model .* fixed-resolution"):
        get_adapter(siglip2)
    headless = transformers.SiglipModel(config(vision_use_head=False))
    with pytest.raises(UnsupportedModelError, match="no attention-pool head"):
        get_adapter(headless)


def test_wrapped_without_its_tokenizer_it_takes_prompts_as_embeddings(loaded):
    bare = ge.wrap_model(loaded.model)
    with pytest.raises(ge.WeightsUnavailableError, match="SigLIP tokenizer could not be loaded.*embeddings"):
        ge.explain_image(bare, pixels("model"), ["a dog"])
    targets = unit(2)
    got = ge.explain_image(bare, pixels("model"), targets, labels=["cat", "dog"])
    assert got.prompts == ["cat", "dog"]
    assert relative(got.maps, ge.explain_image(loaded, pixels("model"), targets).maps) < TOL


# --------------------------------------------------------------------------------------- loading
def test_a_saved_folder_loads_offline_with_and_without_its_tokenizer(loaded, tmp_path):
    folder = tmp_path / "siglip"
    loaded.model.save_pretrained(folder, safe_serialization=True)
    without = ge.load_model(f"hf:{folder}", device="cpu")
    assert without.family == "Hugging Face SigLIP"
    with pytest.raises(ge.WeightsUnavailableError, match="SigLIP tokenizer could not be loaded"):
        ge.explain_image(without, pixels("model"), ["a dog"])
    hf_tokenizer().save_pretrained(folder)
    again = ge.load_model(f"hf:{folder}", device="cpu")
    images = pixels("model")
    assert relative(ge.explain_image(again, images, PROMPTS).maps, ge.explain_image(loaded, images, PROMPTS).maps) < TOL
    naflex = tmp_path / "naflex"
    naflex.mkdir()
    (naflex / "config.json").write_text('{"model_type": "siglip2", "architectures": ["Siglip2Model"]}')
    (naflex / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="is a Siglip2Model: SigLIP 2's NaFlex"):
        ge.load_model(f"hf:{naflex}", device="cpu")


def test_a_text_is_said_to_be_cut_only_when_it_is(loaded):
    """SigLIP's tokenizer adds its end token alone: a text of CONTEXT - 1 pieces fits whole (no warning, its
    last piece kept before the end token), one of CONTEXT pieces is cut (a warning naming the one special token)."""
    import warnings

    from gradeclip_utils.text import tokenize

    tokenizer = loaded.tokenizer
    assert tokenizer.special_tokens == len(tokenizer.tokenizer("")["input_ids"]) == 1
    texts = {tokenizer.count(" ".join(["red"] * n)): " ".join(["red"] * n) for n in range(1, CONTEXT + 2)}
    fits, cut = texts[CONTEXT - 1], texts[CONTEXT]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenize(loaded, [fits])
    assert ids[0].tolist() == tokenizer.tokenizer(fits)["input_ids"]  # every piece and the end token
    with pytest.warns(UserWarning, match=f"text of {CONTEXT} tokens is cut to the context length {CONTEXT} "
                                         r"\(1 start/end token included\)"):
        tokenize(loaded, [cut])
