"""Every CLIP family on the same random weights: open_clip, Hugging Face (CLIPModel and the
vision/text pair), OpenAI's clip package, and open_clip's 4.x attention contract give the same maps,
scores and word importance; ResNet CLIPs equal a literal attention-pool implementation.

The weights are realistic (non-zero biases, norms away from the identity: tests/support/realistic.py) and the
converters (tests/support/families.py) are written apart from the package.
"""

from __future__ import annotations

import copy

import numpy as np

import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.config import applied_settings
from gradeclip_utils.adapters import UnsupportedMethodError
from gradeclip_utils.plotting import NEGATIVE_COLOUR
from gradeclip_utils.methods import IMAGE_METHODS, TEXT_METHODS

from support import families as fam
from support import full_matrix
from support import reference
from support.families import relative
from support.blip import match_head_methods

TOL = 1e-5
PROMPTS = ["a red circle", "a photo of a dog", "two blue squares", ""]
CAPTIONS = ["a red circle left of a blue square", "a photo of a small dog"]
MODEL_PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
NATIVE_PIXELS = fam.non_square_pixels(2, (48, 80))
#: options that keep the slow baselines quick; the same for every family
FAST = {"rise": {"masks": 48, "mask_batch": 48}, "m2ib": {"steps": 3, "samples": 2}}


def wrap(model, name):
    return ge.wrap_model(model, fam.preprocess(), fam.tokenizer(), name=name)


@pytest.fixture(scope="module")
def reference_model():
    return fam.reference_open_clip()


@pytest.fixture(scope="module")
def families(reference_model):
    """The reference weights in every family (name -> LoadedModel)."""
    return {
        "open_clip": wrap(reference_model, "open_clip"),
        "hf": wrap(fam.to_hf(reference_model), "hf"),
        "hf_eager_legacy": wrap(fam.to_hf(reference_model, eos_token_id=2, attn_implementation="eager"), "hf-legacy"),
        "hf_pair": ge.wrap_model(fam.to_hf_pair(reference_model), fam.preprocess(), fam.tokenizer(), name="hf-pair"),
        "openai": wrap(fam.to_openai(reference_model), "openai"),
        "open_clip_4x": wrap(fam.to_dev_attention(reference_model), "open_clip-4x"),
    }


OTHERS = ["hf", "hf_eager_legacy", "hf_pair", "openai", "open_clip_4x"]


def test_each_family_is_recognised_by_its_own_adapter(families):
    assert families["open_clip"].family == "open_clip ViT"
    assert families["hf"].family == families["hf_pair"].family == "Hugging Face CLIP"
    assert families["openai"].family == "OpenAI clip ViT"
    assert families["open_clip_4x"].family == "open_clip ViT"


@pytest.mark.parametrize("name", ["open_clip", *OTHERS])
@pytest.mark.parametrize("pixels", ["model", "native"])
def test_embeddings_equal_the_models_own_forward(families, name, pixels):
    loaded = families[name]
    adapter = loaded.adapter
    images = MODEL_PIXELS if pixels == "model" else NATIVE_PIXELS
    tokens = loaded.tokenize(CAPTIONS + PROMPTS)
    if pixels == "model" or name.startswith("hf"):  # HF interpolates positions itself; the others cannot
        assert relative(adapter.encode_image(images), adapter.native_encode_image(images)) < TOL
    reference_adapter = families["open_clip"].adapter
    assert relative(adapter.encode_image(images), reference_adapter.encode_image(images)) < TOL
    assert relative(adapter.encode_text(tokens), adapter.native_encode_text(tokens)) < TOL
    assert relative(adapter.encode_text(tokens), reference_adapter.encode_text(tokens)) < TOL


GRAD_ECLIP_CASES = [(mode, qk, layers, res) for mode in ("faithful", "official") for qk in ("raw", "out_proj")
                    for layers in ((-1,), (0,), (0, 2)) for res in ("model", "native")]


@pytest.mark.parametrize("mode,qk,layers,resolution", GRAD_ECLIP_CASES)
def test_grad_eclip_maps_equal_across_families(families, mode, qk, layers, resolution):
    pixels = MODEL_PIXELS if resolution == "model" else NATIVE_PIXELS
    want = ge.explain_image(families["open_clip"], pixels, PROMPTS, mode=mode, qk=qk, layers=layers)
    assert float(want.maps.abs().max()) > 0
    for name in OTHERS:
        got = ge.explain_image(families[name], pixels, PROMPTS, mode=mode, qk=qk, layers=layers)
        assert relative(got.maps, want.maps) < TOL, name
        assert relative(got.scores, want.scores) < TOL, name


def test_the_reference_model_itself_equals_the_literal_equations(families, reference_model):
    """The family comparison's anchor: on the realistic weights, open_clip maps equal the literal code."""
    loaded = families["open_clip"]
    targets = ge.encode_texts(loaded, PROMPTS[:3])
    for official in (False, True):
        for qk in ("raw", "out_proj"):
            want, want_scores = reference.image_maps(reference_model, NATIVE_PIXELS, targets, [0, 2], official, qk)
            got = ge.explain_image(loaded, NATIVE_PIXELS, targets, layers=(0, 2),
                                   mode="official" if official else "faithful", qk=qk)
            assert relative(got.maps, want) < TOL and relative(got.scores, want_scores) < TOL


IMAGE_CASES = [(method, {}) for method in sorted(set(IMAGE_METHODS) - {"grad_eclip"} - match_head_methods())] + [
    (method, {"variant": "authors"}) for method in ("raw_attention", "maskclip", "grad_cam")] + [
    ("game", {"target": "cosine"})]


@pytest.mark.parametrize("method,extra", IMAGE_CASES, ids=[f"{m}{'-' + '-'.join(map(str, e.values())) if e else ''}"
                                                          for m, e in IMAGE_CASES])
def test_every_other_image_method_equals_across_families(families, method, extra):
    options = {**FAST.get(method, {}), **extra}
    want = ge.explain_image(families["open_clip"], NATIVE_PIXELS, PROMPTS[:3], method=method, **options)
    assert float(want.maps.abs().max()) > 0
    for name in OTHERS:
        got = ge.explain_image(families[name], NATIVE_PIXELS, PROMPTS[:3], method=method, **options)
        assert relative(got.maps, want.maps) < TOL, (name, relative(got.maps, want.maps))
        assert relative(got.scores, want.scores) < TOL, name


TEXT_CASES = [(method, "faithful") for method in sorted(TEXT_METHODS)] + [("grad_eclip", "official")]


@pytest.mark.parametrize("method,mode", TEXT_CASES)
def test_word_importance_equals_across_families(families, method, mode):
    # the settings the method applies (GAME and M2IB take no layers: they refuse them)
    options = {**applied_settings(method, {"layers": 2, "mode": mode}), **FAST.get(method, {})}
    want = ge.explain_text(families["open_clip"], MODEL_PIXELS, CAPTIONS, method=method, **options)
    assert float(want.word_importance.abs().max()) > 0
    for name in OTHERS:
        got = ge.explain_text(families[name], MODEL_PIXELS, CAPTIONS, method=method, **options)
        assert got.words == want.words
        assert relative(got.word_importance, want.word_importance) < TOL, name
        assert relative(got.scores, want.scores) < TOL, name


def test_results_name_the_family(families):
    for name, loaded in families.items():
        ex = ge.explain_image(loaded, MODEL_PIXELS[:1], PROMPTS[:1])
        assert ex.settings["family"] == loaded.family


# ------------------------------------------------------------------------------------------ ResNet
@pytest.fixture(scope="module")
def resnets():
    model = fam.reference_open_clip(resnet=True)
    return {"open_clip": wrap(model, "rn-open_clip"), "openai": wrap(fam.to_openai(model), "rn-openai")}


RESNET_PIXELS = fam.non_square_pixels(2, (64, 96), seed=9)


@pytest.mark.parametrize("name", ["open_clip", "openai"])
@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("pixels", ["model", "native"])
def test_resnet_maps_equal_a_literal_attention_pool(resnets, name, official, qk, pixels):
    loaded = resnets[name]
    images = MODEL_PIXELS if pixels == "model" else RESNET_PIXELS
    targets = ge.encode_texts(loaded, PROMPTS[:3])
    want, want_scores = reference.resnet_maps(loaded.model, images, targets, official=official, qk=qk)
    got = ge.explain_image(loaded, images, targets, mode="official" if official else "faithful", qk=qk)
    assert got.maps.shape[-2:] == (images.shape[-2] // 32, images.shape[-1] // 32)
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL
    assert relative(got.scores, want_scores) < TOL


def test_resnet_scores_are_the_models_own_at_model_resolution(resnets):
    for loaded in resnets.values():
        adapter = loaded.adapter
        assert adapter.family.endswith("ResNet") and adapter.num_image_blocks == 1
        assert relative(adapter.encode_image(MODEL_PIXELS), adapter.native_encode_image(MODEL_PIXELS)) < TOL
        targets = ge.encode_texts(loaded, PROMPTS[:2])
        scores = ge.explain_image(loaded, MODEL_PIXELS, targets).scores
        own = torch.nn.functional.normalize(adapter.native_encode_image(MODEL_PIXELS).float(), dim=-1) @ targets.T
        assert relative(scores, own) < TOL


RESNET_SUPPORTED = ["grad_eclip", "grad_eclip_no_spatial", "raw_attention", "rollout", "game", "game_last",
                    "grad_cam", "maskclip", "clip_surgery", "rise"]


@pytest.mark.parametrize("method", RESNET_SUPPORTED)
def test_resnet_methods_equal_across_resnet_families(resnets, method):
    options = FAST.get(method, {})
    want = ge.explain_image(resnets["open_clip"], RESNET_PIXELS, PROMPTS[:3], method=method, **options)
    got = ge.explain_image(resnets["openai"], RESNET_PIXELS, PROMPTS[:3], method=method, **options)
    assert float(want.maps.abs().max()) > 0
    assert relative(got.maps, want.maps) < 5 * TOL and relative(got.scores, want.scores) < TOL


# ------------------------------------------------------------ GAME and rollout, one block at a time
@pytest.mark.parametrize("name", ["open_clip", *OTHERS])
def test_game_and_rollout_equal_the_full_matrix_computation(families, name):
    """Folded one block at a time, GAME and rollout give the maps and word rows of the full N x N matrices
    over every block's attention (non-square pictures, 3 images x 3 prompts, GAME's targets in several
    chunks; all blocks, from block 1, the last block)."""
    loaded = families[name]
    adapter = loaded.adapter
    pixels = fam.non_square_pixels(3, (48, 80), seed=11)
    full_matrix.check_image_methods(adapter, pixels, ge.encode_texts(loaded, PROMPTS[:3]))
    images = torch.nn.functional.normalize(adapter.encode_image(pixels).float(), dim=-1)
    full_matrix.check_text_game(adapter, loaded.tokenize(CAPTIONS + PROMPTS[:1]), images)


@pytest.mark.parametrize("name", ["open_clip", "openai"])
def test_resnet_game_and_rollout_equal_the_full_matrix_computation(resnets, name):
    """The attention pool is the one block: its step is the pool, as the trace computes it."""
    loaded = resnets[name]
    pixels = fam.non_square_pixels(3, (64, 96), seed=12)
    full_matrix.check_image_methods(loaded.adapter, pixels, ge.encode_texts(loaded, PROMPTS[:3]), rollout_starts=(0,),
                                    game_options=full_matrix.ONE_BLOCK_OPTIONS)


def test_resnet_grad_cam_is_grad_cam_on_the_final_feature_map(resnets):
    """Grad-CAM's ResNet analogue: alpha = mean over positions of dS/dA (gradients through the mean
    token included), map = ReLU(sum_c alpha_c A_c), A the pool's input feature map."""
    loaded = resnets["open_clip"]
    targets = ge.encode_texts(loaded, PROMPTS[:2])
    visual = loaded.model.visual
    features = reference.resnet_features(visual, MODEL_PIXELS).detach().requires_grad_(True)
    embedding = visual.attnpool(features)
    cos = torch.nn.functional.normalize(embedding, dim=-1) @ targets.T
    want = torch.zeros(2, 2, *features.shape[-2:])
    for k in range(2):
        (grad,) = torch.autograd.grad(cos[:, k].sum(), [features], retain_graph=True)
        alpha = grad.mean(dim=(2, 3))
        want[:, k] = torch.relu(torch.einsum("bc,bchw->bhw", alpha, features.detach()))
    got = ge.explain_image(loaded, MODEL_PIXELS, targets, method="grad_cam")
    assert relative(got.maps, want) < TOL


def authors_resnet_surgery(visual, pixels):
    """CLIP Surgery's CS-RN image features, written as its ``clip_surgery_model.py`` computes them at the
    model's resolution: the pool rebuilt as an ``Attention`` whose qkv weights are [v_proj; v_proj; v_proj]
    (q = k = v), both paths softmax(q k^T * head_dim^-0.5) v per head, ``proj`` = c_proj, the class token
    from the original path (which, with q = k = v, is the same v-v attention)."""
    pool = visual.attnpool
    x = reference.resnet_features(visual, pixels).detach()
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :]
    x = x.transpose(0, 1)  # B N C
    batch, n, c = x.shape
    heads = pool.num_heads
    weight = torch.cat([pool.v_proj.weight] * 3, 0)
    bias = torch.cat([pool.v_proj.bias] * 3)
    qkv = (x @ weight.T + bias).reshape(batch, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = (c // heads) ** -0.5
    attn_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    attn = ((v @ v.transpose(-2, -1)) * scale).softmax(dim=-1)
    out = pool.c_proj((attn @ v).transpose(1, 2).reshape(batch, n, c))
    out_ori = pool.c_proj((attn_ori @ v).transpose(1, 2).reshape(batch, n, c))
    out[:, 0, :] = out_ori[:, 0, :]
    return out


@pytest.mark.parametrize("name", ["open_clip", "openai"])
def test_resnet_clip_surgery_equals_the_authors_cs_resnet(resnets, name):
    """Both forms (class set and the empty string's single-text form) against the authors' CS-RN features
    and their ``clip_feature_surgery``; the scores are the model's own."""
    from methods.test_baselines import authors_feature_surgery  # by its folder: any collection order

    loaded = resnets[name]
    targets = ge.encode_texts(loaded, PROMPTS[:3])
    with torch.no_grad():
        features = torch.nn.functional.normalize(authors_resnet_surgery(loaded.model.visual, MODEL_PIXELS), dim=-1)
    got = ge.explain_image(loaded, MODEL_PIXELS, targets, method="clip_surgery")
    want = torch.cat([authors_feature_surgery(features[b:b + 1], targets) for b in range(2)])[:, 1:].transpose(1, 2)
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want.reshape(got.maps.shape)) < TOL
    own = torch.nn.functional.normalize(loaded.adapter.native_encode_image(MODEL_PIXELS).float(), dim=-1) @ targets.T
    assert relative(got.scores, own) < TOL
    empty = ge.encode_texts(loaded, "")
    single = ge.explain_image(loaded, MODEL_PIXELS, PROMPTS[1], method="clip_surgery")
    assert single.settings.get("surgery_form", "").startswith("single-text")
    want_single = (features[:, 1:] @ (targets[1] - empty[0])).reshape(single.maps.shape)
    assert relative(single.maps, want_single) < TOL
    with pytest.raises(ValueError, match="depth must be 1"):
        ge.explain_image(loaded, MODEL_PIXELS, targets, method="clip_surgery", depth=2)


@pytest.mark.parametrize("method,options,reason", [("itsm", {}, "no per-patch output tokens"),
                                                   ("m2ib", {}, "leaves no tokens after it"),
                                                   ("legrad", {"layer_index": -1}, "leaves no tokens after it"),
                                                   ("legrad", {}, "leaves no tokens after it")])
def test_resnet_refuses_what_needs_transformer_blocks_naming_method_and_family(resnets, method, options, reason):
    with pytest.raises(UnsupportedMethodError, match=rf"{method} is not available for open_clip ResNet models: .*{reason}"):
        ge.explain_image(resnets["open_clip"], MODEL_PIXELS, PROMPTS[:2], method=method, **options)


def test_the_evaluation_runs_what_a_resnet_can_and_names_the_rest(resnets, tmp_path):
    """By default the evaluation runs every method the family can run and names the others (config,
    summary); a method asked for by name that the family cannot run is an error before any work; the
    notebooks' method list leaves them out too."""
    import json

    import gradeclip_utils.evaluation as ev
    from gradeclip_utils.studies.methods import available_methods

    loaded = resnets["open_clip"]
    refused = {"itsm", "m2ib", "legrad"}
    data = ev.synthetic_set(loaded, 2)
    fast = dict(rise_masks=8, m2ib_steps=1, m2ib_samples=1, sanity_images=0, timing_images=0, tie_seeds=1,
                faithfulness=False, progress=False)
    summary = ev.evaluate(loaded, data, tmp_path / "rn", **fast)
    config = json.loads((tmp_path / "rn" / "config.json").read_text())
    assert set(config["not_run"]) == refused
    for method, reason in config["not_run"].items():
        assert reason.startswith(f"{method} is not available for open_clip ResNet models: ")
    ran = {row.split(",")[4] for row in (tmp_path / "rn" / "per_image.csv").read_text().splitlines()[1:]}
    assert ran == set(ev.DEFAULT_METHODS) - refused
    assert "Not run on this model" in (tmp_path / "rn" / "summary.md").read_text()
    assert set(summary["methods"]) == ran
    with pytest.raises(UnsupportedMethodError, match="m2ib is not available for open_clip ResNet models"):
        ev.evaluate(loaded, data, tmp_path / "named", methods=["grad_eclip", "m2ib"], **fast)
    assert not (tmp_path / "named" / "per_image.csv").exists()
    listed = available_methods(model=loaded, options={"rise": {"masks": 8}})
    assert refused.isdisjoint(listed) and {"grad_eclip", "clip_surgery", "maskclip", "rise"} <= set(listed)
    assert available_methods(model=resnets["openai"]) == listed


def test_resnet_native_resolution_interpolates_the_pool_positions(resnets):
    """A 224 x 320-like input (here 64 x 96 for the small model): open_clip's own forward cannot take it
    (its pool's positional embedding is fixed), the adapter interpolates it bicubically."""
    loaded = resnets["open_clip"]
    with pytest.raises(RuntimeError):
        loaded.model.encode_image(RESNET_PIXELS)
    ex = ge.explain_image(loaded, RESNET_PIXELS, PROMPTS[:1])
    assert ex.maps.shape == (2, 1, 2, 3) and torch.isfinite(ex.maps).all()


def test_resnet_text_word_importance_is_the_text_towers(resnets, families):
    """A ResNet CLIP's text tower is a transformer like any other: word importance works."""
    words = ge.explain_text(resnets["openai"], MODEL_PIXELS, CAPTIONS, layers=2)
    same = ge.explain_text(resnets["open_clip"], MODEL_PIXELS, CAPTIONS, layers=2)
    assert relative(words.word_importance, same.word_importance) < 5 * TOL
    assert torch.allclose(words.word_importance.sum(-1), torch.ones(2, 2), atol=1e-5)


# ------------------------------------------------------------------------------ open_clip 4.x
def test_open_clip_4x_inner_norm_is_applied_as_the_model_applies_it(reference_model):
    """4.x's optional ln_inner (a norm between the attention and out_proj): maps equal the literal
    equations with it, and scores equal the model's own forward."""
    model = fam.to_dev_attention(reference_model, inner_norm=True)
    loaded = wrap(model, "inner-norm")
    targets = ge.encode_texts(loaded, PROMPTS[:3])
    want, want_scores = reference.image_maps(model, NATIVE_PIXELS, targets, [1, 2])
    got = ge.explain_image(loaded, NATIVE_PIXELS, targets, layers=(1, 2))
    assert relative(got.maps, want) < TOL and relative(got.scores, want_scores) < TOL
    assert relative(loaded.adapter.encode_image(MODEL_PIXELS), model.encode_image(MODEL_PIXELS)) < TOL


@pytest.mark.parametrize("feature,message", [("ln_q", "q/k normalisation"), ("logit_scale", "scaled cosine"),
                                             ("head_scale", "per-head output scaling")])
def test_open_clip_4x_attention_features_that_change_the_maths_are_refused_by_name(reference_model, feature, message):
    model = fam.to_dev_attention(reference_model)
    attn = model.transformer.resblocks[1].attn
    if feature == "ln_q":
        attn.ln_q = torch.nn.LayerNorm(64)
    else:
        setattr(attn, feature, torch.nn.Parameter(torch.ones(2, 1, 1)))
    with pytest.raises(ge.UnsupportedModelError, match=rf"text tower uses {message}"):
        wrap(model, "refused")


# ------------------------------------------------------------------------------------- tokenizers
def hf_tokenizer(tmp_path):
    """A real transformers CLIPTokenizer built offline from open_clip's bundled BPE files."""
    import gzip
    import json

    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    simple = oct.SimpleTokenizer()
    vocab = tmp_path / "vocab.json"
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # HF's names of the two
    vocab.write_text(json.dumps({names.get(k, k): v for k, v in simple.encoder.items()}))
    merges_path = tmp_path / "merges.txt"
    with gzip.open(oct.default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges_path.write_text("\n".join(["#version: 0.2", *lines[1:49152 - 256 - 2 + 1]]) + "\n")
    return CLIPTokenizer(str(vocab), str(merges_path))


def test_a_hugging_face_tokenizer_gives_the_same_words_and_importance(families, tmp_path):
    tokenizer = hf_tokenizer(tmp_path)
    hf = families["hf"]
    with_hf = ge.wrap_model(hf.model, fam.preprocess(), tokenizer, name="hf-tokenizer")
    ids, want_ids = with_hf.tokenize(CAPTIONS), hf.tokenize(CAPTIONS).cpu()
    assert torch.equal(ids, want_ids)  # HF's own padding (the end token) is replaced by CLIP's 0
    want = ge.explain_text(hf, MODEL_PIXELS, CAPTIONS + ["naïve café crème"], layers=2)
    got = ge.explain_text(with_hf, MODEL_PIXELS, CAPTIONS + ["naïve café crème"], layers=2)
    assert got.words == want.words and got.words[2] == ["naïve", "café", "crème"]
    assert torch.equal(got.word_importance, want.word_importance)


def test_a_tokenizer_stub_that_maps_words_to_unknown_ids_is_refused(families):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    stub = Tokenizer(models.WordLevel({"<unk>": 0, "<pad>": 1}, unk_token="<unk>"))
    stub.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=stub, unk_token="<unk>", pad_token="<pad>")
    with pytest.raises(ValueError, match="maps ordinary words .* to unknown or identical ids"):
        ge.wrap_model(families["hf"].model, fam.preprocess(), tokenizer)


def test_defaults_for_preprocess_and_tokenizer(reference_model):
    hf = fam.to_hf(reference_model)
    loaded = ge.wrap_model(hf)  # preprocess and tokenizer from the model
    ref = wrap(reference_model, "ref")
    picture = (torch.rand(3, 70, 90) * 255).to(torch.uint8)
    a = ge.explain_image(loaded, picture, PROMPTS[:2], resolution="model")
    b = ge.explain_image(ref, picture, PROMPTS[:2], resolution="model")
    assert relative(a.maps, b.maps) < TOL
    assert loaded.context_length == fam.CONTEXT


# ------------------------------------------------------------------------------------------ state
def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()], copy.deepcopy(model.state_dict()),
            len(model._forward_hooks) + sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))


@pytest.mark.parametrize("name", ["hf", "hf_pair", "openai", "open_clip_4x", "resnet"])
def test_new_adapters_leave_the_model_as_it_was_also_after_an_exception(families, resnets, name, monkeypatch):
    loaded = resnets["openai"] if name == "resnet" else families[name]
    model = loaded.model
    model.train()
    before = _state(model)
    ge.explain_image(loaded, NATIVE_PIXELS if name != "resnet" else RESNET_PIXELS, PROMPTS[:2], layers=(-1,))
    ge.explain_text(loaded, MODEL_PIXELS, CAPTIONS, layers=1)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1] and all(g is None for g in after[2]) and before[4] == after[4]
    assert all(torch.equal(before[3][k], after[3][k]) for k in before[3])
    from gradeclip_utils.methods import grad_eclip

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(grad_eclip, "value_projection", boom)
    with pytest.raises(RuntimeError, match="boom"):
        ge.explain_image(loaded, MODEL_PIXELS, PROMPTS[:2])
    assert _state(model)[0] == before[0] and _state(model)[4] == before[4]
    model.eval()


# ------------------------------------------------------------------------------------------ loading
def test_load_model_reads_a_hugging_face_folder_offline(reference_model, families, tmp_path):
    import json

    hf = fam.to_hf(reference_model)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    loaded = ge.load_model(f"hf:{tmp_path / 'hf'}", device="cpu")
    assert loaded.family == "Hugging Face CLIP" and loaded.normalization == ((0.5,) * 3, (0.25,) * 3)
    want = ge.explain_image(families["open_clip"], NATIVE_PIXELS, PROMPTS[:2])
    got = ge.explain_image(loaded, NATIVE_PIXELS, PROMPTS[:2])
    assert relative(got.maps, want.maps) < TOL and got.settings["model"] == f"hf:{tmp_path / 'hf'}"


def test_load_model_refuses_a_hugging_face_folder_without_safetensors(reference_model, tmp_path):
    hf = fam.to_hf(reference_model)
    folder = tmp_path / "bin"
    folder.mkdir()
    hf.config.to_json_file(str(folder / "config.json"))
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")  # pickled weights only
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        ge.load_model(f"hf:{tmp_path / 'bin'}", device="cpu")


def test_load_model_without_network_says_how_to_load_offline():
    with pytest.raises(ge.WeightsUnavailableError, match=r"load_model\(.hf:/path/to/folder.\)"):
        ge.load_model("hf:openai/clip-vit-base-patch16", device="cpu")


def test_load_model_builds_an_openai_clip_model_from_a_state_dict(reference_model, families, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "openai.safetensors"
    save_file({k: v.contiguous() for k, v in fam.openai_state_dict(reference_model).items()}, str(path))
    for loaded in (ge.load_model(f"openai-clip:{path}", device="cpu"),
                   ge.load_model("openai-clip:ViT-tiny", pretrained=str(path), device="cpu")):
        assert loaded.family == "OpenAI clip ViT" and loaded.precision == "fp32"
        want = ge.explain_image(families["open_clip"], NATIVE_PIXELS, PROMPTS[:2])
        assert relative(ge.explain_image(loaded, NATIVE_PIXELS, PROMPTS[:2]).maps, want.maps) < TOL
    with pytest.raises(FileNotFoundError, match="TorchScript archives"):
        ge.load_model("openai-clip:ViT-B/16", device="cpu")


def test_an_openai_state_dict_that_pickles_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"w": Evil()}, handle, protocol=2)
    with pytest.raises(ge.UnsafeCheckpointError):
        ge.load_model(f"openai-clip:{path}", device="cpu")


def test_openai_fp16_weights_as_build_model_gives_them(reference_model):
    """build_model's fp16 weights with fp32 LayerNorms are recognised and kept as given."""
    half = fam.to_openai(reference_model, fp16=True)
    loaded = wrap(half, "openai-fp16")
    assert loaded.precision == "fp16" and loaded.adapter.dtype == torch.float16
    assert half.ln_final.weight.dtype == torch.float32  # as OpenAI builds it


def test_zero_shot_classifier_is_open_clips_recipe_in_every_family(families):
    from open_clip import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from gradeclip_utils.prompts import zero_shot_classifier

    names, templates = ["red circle", "blue square", "dog"], OPENAI_IMAGENET_TEMPLATES[:6]
    reference_loaded = families["open_clip"]
    with torch.no_grad():
        want = build_zero_shot_classifier(reference_loaded.model, reference_loaded.tokenizer, names, templates,
                                          device="cpu").T
    for name in ["open_clip", *OTHERS]:
        got = zero_shot_classifier(families[name], names, templates, progress=False)
        assert relative(got, want) < TOL, name


# -------------------------------------------------------------------------------- models side by side
def test_compare_models_side_by_side(families, resnets, tmp_path):
    from scipy.stats import spearmanr

    pictures = [(torch.rand(3, 70, 100, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8)
                for i in range(2)]  # each model preprocesses them itself (patch 16 and stride 32)
    comparison = ge.compare_models({"open_clip": families["open_clip"], "hf": families["hf"],
                                    "resnet": resnets["openai"]}, pictures, PROMPTS[:2])
    assert comparison.names == ["open_clip", "hf", "resnet"] and comparison.scores.shape == (3, 2, 2)
    agreement = comparison.agreement()
    assert agreement.shape == (2, 2, 3, 3)
    assert np.allclose(agreement[..., 0, 1], 1.0, atol=1e-6)  # the same weights in two families
    maps = comparison.upsampled(1)  # the ResNet's 2 x 3 grid on the ViT's 64 x 96 picture
    assert comparison.explanations[2].grid_sizes[1] == (2, 3) and maps.shape == (3, 2, 64, 96)
    checked = 0
    for b in range(2):
        maps = comparison.upsampled(b)
        for k in range(2):
            for i, j in ((0, 2), (1, 2)):
                a, c = maps[i, k].flatten().numpy(), maps[j, k].flatten().numpy()
                if a.std() == 0 or c.std() == 0:  # a constant map ranks nothing (scipy: nan); defined as 0, or 1
                    assert agreement[b, k, i, j] == float(a.std() == c.std())  # for two constant maps
                    continue
                assert abs(agreement[b, k, i, j] - spearmanr(a, c).statistic) < 1e-9
                assert agreement[b, k, j, i] == agreement[b, k, i, j]
                checked += 1
    assert checked >= 2
    figure = comparison.plot(1, shared_scale=True)
    maps = comparison.upsampled(1).numpy()  # (M, K, H, W)
    panels = figure.axes[:-1]  # models x prompts, then the colour bar
    assert len(panels) == maps.shape[0] * maps.shape[1]
    rows = sorted({round(ax.get_position().y0, 6) for ax in panels}, reverse=True)
    assert len(rows) == maps.shape[0]  # a row per model (2 prompts fit the default width)
    low, high = min(0.0, float(maps.min())), float(maps.max())  # the explorers' shared scale (map_scale)
    for index, ax in enumerate(panels):
        m, k = divmod(index, maps.shape[1])
        assert np.allclose(ax.images[1].get_array(), maps[m, k])  # raw values on the one scale
        assert ax.images[1].norm.vmin == pytest.approx(low) and ax.images[1].norm.vmax == pytest.approx(high)
        score = float(comparison.scores[m, 1, k])
        assert comparison.names[m] in ax.get_title() and f"{abs(score):.3f}" in ax.get_title()
        assert (ax.title.get_color() == NEGATIVE_COLOUR) == (score < 0)
    assert figure.axes[-1].get_ylim() == pytest.approx((low, high))  # the colour bar says so
    for index, ax in enumerate(comparison.plot(1).axes[:-1]):  # per-panel scale: each map min-max scaled
        raw = maps[divmod(index, maps.shape[1])]  # on its own (a constant map shows zeros)
        span = raw.max() - raw.min()
        want = (raw - raw.min()) / span if span > 0 else np.zeros_like(raw)
        assert np.allclose(ax.images[1].get_array(), want, atol=1e-6)
    assert comparison.save(tmp_path / "cmp").is_file()
    with pytest.raises(TypeError, match="as text"):
        ge.compare_models([families["hf"], families["openai"]], NATIVE_PIXELS, torch.randn(2, fam.EMBED))


# ------------------------------------------------------------------------------ command line, evaluation
@pytest.fixture(scope="module")
def hf_folder(reference_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "clip"
    fam.to_hf(reference_model).save_pretrained(folder, safe_serialization=True)
    return folder


def test_the_command_line_takes_another_family(hf_folder, tmp_path, capsys):
    from gradeclip_utils.cli import main

    out = tmp_path / "fig.png"
    assert main(["explain", "data/samples/three_shapes.png", "a red circle", "a blue square",
                 "--model", f"hf:{hf_folder}", "--device", "cpu", "--out", str(out), "--no-words"]) == 0
    assert out.is_file() and "a red circle" in capsys.readouterr().out


def test_the_evaluation_takes_another_family(hf_folder, tmp_path):
    import json

    from gradeclip_utils.cli import alias_main

    out = tmp_path / "eval"
    alias_main("evaluate", ["--model", f"hf:{hf_folder}", "--device", "cpu", "-n", "3", "--methods",
                            "grad_eclip,raw_attention", "--sanity-images", "0", "--timing-images", "0", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["family"] == "Hugging Face CLIP"
    assert (out / "per_image.csv").read_text().count("grad_eclip") == 3


def test_resnet_maskclip_is_maskclips_resnet_head(resnets):
    """MaskCLIP's maskclip_head.py on a ResNet: c_proj(v_proj(x)) as 1x1 convolutions on the bare feature
    map (no positional embedding), cosine with each text embedding."""
    loaded = resnets["openai"]
    targets = ge.encode_texts(loaded, PROMPTS[:3])
    pool = loaded.model.visual.attnpool
    with torch.no_grad():
        x = reference.resnet_features(loaded.model.visual, RESNET_PIXELS)  # (B, C, h, w)
        v = torch.nn.functional.conv2d(x, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
        feat = torch.nn.functional.conv2d(v, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)
        feat = feat / feat.norm(dim=1, keepdim=True)
        want = torch.einsum("bchw,kc->bkhw", feat, targets)
    got = ge.explain_image(loaded, RESNET_PIXELS, targets, method="maskclip")
    assert relative(got.maps, want) < TOL
