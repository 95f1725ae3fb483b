"""ViT image classifiers: Hugging Face ViTForImageClassification (transformers 5.x, and the 4.x layout through
``authors_vit.as_transformers4``), timm class-token VisionTransformer classifiers and torchvision's
VisionTransformer.

Every family is checked against the literal code of ``classifiers.reference`` on realistic random weights
(width 768, patch 16) and non-square inputs, in both modes and for both scores; timm and Hugging Face on the
same weights against each other; official mode against the authors' notebook (``authors_vit``); targets
(indices, names) and their errors; which methods run and which are refused, from their declarations.
"""

from __future__ import annotations

import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.adapters import UnsupportedMethodError, UnsupportedModelError, get_adapter
from gradeclip_utils.explain import method_support
from gradeclip_utils.methods import get_spec, list_methods, probe_options, refusal

from support.authors_vit import as_transformers4, authors_maps
from support.classifiers import reference, timm_classifier, to_hf, to_torchvision
from support.families import non_square_pixels, relative
from support.blip import match_head_methods

TOLERANCE = 1e-5
CLASSES = [0, 3, 7]
LABELS = ["tabby, tabby cat", "tiger cat", "whippet", "sports car", "car wheel", "goldfish", "tench, Tinca tinca",
          "great white shark", "hen", "ostrich"]


@pytest.fixture(scope="module")
def square():
    """The timm classifier at a square native size (64 x 64: the authors' notebook and torchvision need a
    square one) and the same weights in transformers 5.x and in torchvision."""
    model = timm_classifier(image_size=(64, 64))
    return model, to_hf(model), to_torchvision(model)


@pytest.fixture(scope="module")
def oblong():
    """The same at a non-square native size (48 x 80), where timm and transformers embed the same positions."""
    model = timm_classifier(image_size=(48, 80), seed=1)
    return model, to_hf(model)


def _explain(loaded, pixels, classes, **options):
    out = ge.explain_image(loaded, pixels, classes, progress=False, **options)
    return torch.stack(out.raw), out.scores


# ------------------------------------------------------------------------------------------ families
def test_families_are_recognised_with_their_labels(square):
    timm_model, hf_model, tv_model = square
    timm_adapter, hf_adapter, tv_adapter = get_adapter(timm_model), get_adapter(hf_model), get_adapter(tv_model)
    assert timm_adapter.family == "timm ViT classifier" and hf_adapter.family == "Hugging Face ViT classifier"
    assert tv_adapter.family == "torchvision ViT classifier" and tv_adapter.labels[3] == "class 3"
    for adapter in (timm_adapter, hf_adapter, tv_adapter):
        assert adapter.is_classifier and adapter.text is None and adapter.num_classes == 10
        assert adapter.embed_dim == 10 and adapter.patch_size == (16, 16) and adapter.num_image_blocks == 2
    assert hf_adapter.labels == tuple(hf_model.config.id2label[i] for i in range(10))
    loaded = ge.wrap_model(timm_model, classes=LABELS)
    assert loaded.adapter.labels == tuple(LABELS)
    assert ge.explain_image(loaded, non_square_pixels(1), "whippet", progress=False).prompts == ["whippet"]


@pytest.mark.parametrize("family", ["timm", "hf", "torchvision"])
@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_each_family_matches_the_literal_code(square, family, mode, score):
    """Maps and scores of a non-square input on another grid than the native one (the positional embedding
    resampled as each library resamples it), 12 targets (more than the 10 classes: the Jacobian path) too."""
    timm_model, hf_model, tv_model = square
    loaded = ge.wrap_model({"timm": timm_model, "hf": hf_model, "torchvision": tv_model}[family])
    pixels = non_square_pixels(2, (48, 80))
    for classes in (CLASSES, [9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 9]):
        maps, scores = _explain(loaded, pixels, classes, mode=mode, score=score)
        logits, expected = reference(timm_model, pixels, classes, official=mode == "official", resample=family,
                                     probability=score == "probability")
        values = logits.softmax(-1) if score == "probability" else logits
        assert relative(maps, expected) < TOLERANCE
        assert relative(scores, values[:, classes]) < TOLERANCE
        assert float(expected.max()) > 0 and maps.shape == (2, len(classes), 3, 5)


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_more_classes_than_the_width_match_the_literal_code(mode):
    """1,000 classes on width 768, all explained: the channel weights come from the Jacobian of the normalised
    class token (the head's input, declared by the trace) times the head in closed form; some classes' maps
    against the literal code, all of them against the same classes explained a few at a time."""
    model = timm_classifier(image_size=(64, 64), classes=1000, seed=2)
    pixels = non_square_pixels(2, (48, 80), seed=3)
    picked = [0, 999, 417, 5]
    for family, wrapped in (("timm", model), ("hf", to_hf(model))):
        loaded = ge.wrap_model(wrapped)
        head = loaded.adapter.trace_image(pixels, [1]).linear_head
        assert head.feature.shape == (2, 768) and head.weight.shape == (1000, 768)
        for score in ("logit", "probability"):
            maps, scores = _explain(loaded, pixels, list(range(1000)), mode=mode, score=score)
            logits, expected = reference(model, pixels, picked, official=mode == "official", resample=family,
                                         probability=score == "probability")
            values = logits.softmax(-1) if score == "probability" else logits
            assert relative(maps[:, picked], expected) < TOLERANCE and relative(scores, values) < TOLERANCE
            few, _ = _explain(loaded, pixels, list(range(0, 1000, 7)), mode=mode, score=score)
            assert relative(maps[:, 0::7], few) < TOLERANCE


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_a_deit_without_distillation_matches_the_literal_code(mode):
    """timm's DeiT without distillation is a class-token VisionTransformer: read as one, maps and scores of a
    non-square input equal the literal code's."""
    model = timm_classifier(image_size=(64, 64), seed=4, name="deit_base_patch16_224")
    loaded = ge.wrap_model(model)
    assert loaded.adapter.family == "timm ViT classifier"
    pixels = non_square_pixels(2, (48, 80), seed=6)
    for score in ("logit", "probability"):
        maps, scores = _explain(loaded, pixels, CLASSES, mode=mode, score=score)
        logits, expected = reference(model, pixels, CLASSES, official=mode == "official",
                                     probability=score == "probability")
        values = logits.softmax(-1) if score == "probability" else logits
        assert relative(maps, expected) < TOLERANCE and relative(scores, values[:, CLASSES]) < TOLERANCE


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_timm_and_hugging_face_agree_on_the_same_weights(oblong, mode):
    timm_model, hf_model = oblong
    pixels = non_square_pixels(3, (48, 80), seed=5)
    for score in ("logit", "probability"):
        timm_maps, timm_scores = _explain(ge.wrap_model(timm_model), pixels, CLASSES, mode=mode, score=score)
        hf_maps, hf_scores = _explain(ge.wrap_model(hf_model), pixels, CLASSES, mode=mode, score=score)
        assert relative(hf_maps, timm_maps) < TOLERANCE and relative(hf_scores, timm_scores) < TOLERANCE
    with torch.no_grad():
        native = timm_model(pixels)
        assert relative(hf_model(pixels).logits, native) < TOLERANCE
    faithful = ge.explain_image(ge.wrap_model(hf_model), pixels, list(range(10)), progress=False)
    assert relative(faithful.scores, native) < TOLERANCE  # the faithful scores are the model's own logits


@pytest.mark.parametrize("size", [(48, 80), (64, 96)])
def test_official_mode_is_the_authors_notebook(square, size):
    """The notebook's functions (``authors_vit``) on the transformers 4.x layout of the same weights."""
    hf_model = square[1]
    pixels = non_square_pixels(2, size, seed=7)
    logits, maps = authors_maps(as_transformers4(hf_model), pixels, CLASSES)
    ours, scores = _explain(ge.wrap_model(hf_model), pixels, CLASSES, mode="official")
    assert relative(ours, maps) < TOLERANCE and relative(scores, logits[:, CLASSES]) < TOLERANCE
    with torch.no_grad():  # the recomputed forward is not the model's: its logits move (docs/method.md)
        native = hf_model(pixels, interpolate_pos_encoding=True).logits
    assert (logits - native).abs().mean() > 0.1


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_the_transformers_4_layout_reads_as_the_5_layout(square, mode):
    hf_model = square[1]
    old = ge.wrap_model(as_transformers4(hf_model))
    assert old.adapter.family == "Hugging Face ViT classifier" and not hasattr(old.model.vit, "layers")
    pixels = non_square_pixels(2, (48, 80), seed=8)
    maps, scores = _explain(old, pixels, CLASSES, mode=mode)
    expected, expected_scores = _explain(ge.wrap_model(hf_model), pixels, CLASSES, mode=mode)
    assert relative(maps, expected) < TOLERANCE and relative(scores, expected_scores) < TOLERANCE


@pytest.mark.parametrize("mode", ["faithful", "official"])
def test_torchvision_agrees_with_timm_at_the_native_size(square, mode):
    timm_model, _, tv_model = square
    pixels = non_square_pixels(2, (64, 64), seed=9)
    maps, scores = _explain(ge.wrap_model(tv_model), pixels, CLASSES, mode=mode)
    expected, expected_scores = _explain(ge.wrap_model(timm_model), pixels, CLASSES, mode=mode)
    assert relative(maps, expected) < TOLERANCE and relative(scores, expected_scores) < TOLERANCE
    with torch.no_grad():
        assert relative(tv_model(pixels), timm_model(pixels)) < TOLERANCE


# ------------------------------------------------------------------------------------------ refusals
def _timm(**options):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**{"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                "num_classes": 4, **options}).eval()


@pytest.mark.parametrize("options, words", [
    ({"global_pool": "avg"}, "averaging"),
    ({"class_token": False, "global_pool": "avg"}, "averaging"),
    ({"global_pool": "map"}, "attention-pool probe"),
    ({"num_classes": 0}, "no classification head"),
    ({"reg_tokens": 2}, "register tokens"),
])
def test_timm_classifiers_without_a_class_token_head_are_refused_by_name(options, words):
    with pytest.raises(UnsupportedModelError, match=words):
        ge.wrap_model(_timm(**options))


def test_distilled_and_other_models_are_refused_by_name():
    import timm
    import torchvision
    from transformers import DeiTConfig, DeiTForImageClassification, DeiTForImageClassificationWithTeacher
    from transformers import ViTConfig, ViTForImageClassification

    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=1,
                                  num_classes=4)
    with pytest.raises(UnsupportedModelError, match="distilled DeiT.*mean of the heads") as refused:
        ge.wrap_model(distilled)
    assert "sum of the class token's and the distillation token's maps" in str(refused.value)
    assert "deit_*_patch16_224" in str(refused.value)
    with pytest.raises(UnsupportedModelError, match="timm ResNet classifiers have no adapter"):
        ge.wrap_model(timm.create_model("resnet10t", pretrained=False, num_classes=4))
    with pytest.raises(UnsupportedModelError, match="torchvision SqueezeNet classifiers have no adapter"):
        ge.wrap_model(torchvision.models.squeezenet1_1(num_classes=4))
    config = DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=16, num_labels=4)
    teacher = "DeiTForImageClassificationWithTeacher: its logit is the mean"
    with pytest.raises(UnsupportedModelError, match=teacher) as refused:
        ge.wrap_model(DeiTForImageClassificationWithTeacher(config))
    assert "the sum of the class token's" in str(refused.value) and "timm:deit_" in str(refused.value)
    with pytest.raises(UnsupportedModelError, match="distillation token between the class token"):
        ge.wrap_model(DeiTForImageClassification(config))
    headless = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=16, num_labels=0)
    with pytest.raises(UnsupportedModelError, match="no classification head"):
        ge.wrap_model(ViTForImageClassification(headless))


# -------------------------------------------------------------------------------------------- targets
@pytest.fixture(scope="module")
def named():
    model = timm_classifier(image_size=(32, 48), seed=2)
    return ge.wrap_model(model, classes=LABELS)


def test_targets_are_indices_or_label_names(named):
    pixels = non_square_pixels(1, (32, 48))
    out = ge.explain_image(named, pixels, ["whippet", 1, "Tabby", "tench", torch.tensor(9).item()], progress=False)
    assert out.prompts == ["whippet", "tiger cat", "tabby, tabby cat", "tench, Tinca tinca", "ostrich"]
    with torch.no_grad():
        logits = named.model(pixels)
    assert relative(out.scores, logits[:, [2, 1, 0, 6, 9]]) < TOLERANCE
    by_tensor = ge.explain_image(named, pixels, torch.tensor([2, 1]), labels=["a", "b"], progress=False)
    assert by_tensor.prompts == ["a", "b"] and torch.equal(by_tensor.scores, out.scores[:, :2])
    single = ge.explain_image(named, pixels, 3, score="probability", progress=False)
    assert relative(single.scores, logits.softmax(-1)[:, [3]]) < TOLERANCE  # over all classes: one is enough


@pytest.mark.parametrize("prompts, error, words", [
    ("cat", ValueError, r"unknown class name 'cat'.*close matches: 'tabby, tabby cat' \(0\), 'tiger cat' \(1\)"),
    ("whipet", ValueError, r"close matches: 'whippet' \(2\)"),
    ("car", ValueError, r"unknown class name 'car'.*'sports car' \(3\), 'car wheel' \(4\)"),
    ([10], ValueError, r"class index 10 is out of range: this classifier has 10 classes \(indices 0 to 9\)"),
    ([-1], ValueError, "class index -1 is out of range"),
    ([True], TypeError, "a class is an index or a label name"),
    ([], TypeError, "class indices or label names"),
    (torch.zeros(2, 5), ValueError, r"class weightings must be a finite \(K, 10\) tensor"),
])
def test_bad_targets_are_clear_errors(named, prompts, error, words):
    with pytest.raises(error, match=words):
        ge.explain_image(named, non_square_pixels(1, (32, 48)), prompts, progress=False)


def test_ambiguous_names_list_their_classes():
    model = ge.wrap_model(timm_classifier(image_size=(32, 48), layers=1, seed=2),
                          classes=["crane", "crane", *LABELS[2:]])
    with pytest.raises(ValueError, match=r"names 2 classes: 'crane' \(0\), 'crane' \(1\)"):
        ge.explain_image(model, non_square_pixels(1, (32, 48)), "Crane", progress=False)


def test_scores_texts_and_wrapping_errors(named):
    pixels = non_square_pixels(1, (32, 48))
    for score in ("cosine", "contrast"):
        with pytest.raises(UnsupportedMethodError, match=f"score='{score}' is not a score of an image classifier"):
            ge.explain_image(named, pixels, 1, score=score, progress=False)
    with pytest.raises(UnsupportedMethodError, match="grad_eclip is not available for timm ViT classifier models: "
                                                     "they have no text tower"):
        ge.explain_text(named, pixels, ["a cat"])
    with pytest.raises(ValueError, match="11 class names for a classifier of 10 classes"):
        ge.wrap_model(named.model, classes=LABELS + ["more"])
    with pytest.raises(ValueError, match="takes no tokenizer"):
        ge.wrap_model(named.model, tokenizer=lambda texts: None)
    with pytest.raises(ValueError, match="2 labels for 1 classes"):
        ge.explain_image(named, pixels, 1, labels=["a", "b"], progress=False)


# -------------------------------------------------------------------------------------------- methods
def test_every_method_runs_or_is_refused_by_its_declaration(named):
    """A method the classifier's tower lacks a requirement of is refused by ``refusal`` (its declaration and
    the tower's), before any work; every other one explains the classes, with the logits as scores."""
    pixels = non_square_pixels(2, (32, 48))
    with torch.no_grad():
        logits = named.model(pixels)[:, [2, 5]]
    refused = []
    for method in list_methods()["image"]:
        spec = get_spec(method)
        reason = refusal(spec, named.adapter)
        assert method_support(named, method) == reason
        if reason is not None:
            refused.append(method)
            assert ("does not feed its tokens to a text encoder's cross-attention" if method in match_head_methods()
                    else "a classifier's targets are its classes") in reason
            with pytest.raises(UnsupportedMethodError, match=f"{method} is not available for timm ViT classifier"):
                ge.explain_image(named, pixels, [2, 5], method=method, progress=False)
            continue
        out = ge.explain_image(named, pixels, [2, 5], method=method, progress=False, **probe_options(method, {}))
        maps = torch.stack(out.raw)
        assert maps.shape[:2] == (2, 2) and torch.isfinite(maps).all(), method
        assert relative(out.scores, logits) < TOLERANCE, method
    assert sorted(refused) == sorted(["clip_surgery", "itsm", "maskclip", *match_head_methods()])


def test_load_model_names_classifiers(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    ViTForImageClassification(config).save_pretrained(tmp_path)
    loaded = ge.load_model(f"hf:{tmp_path}", device="cpu")
    assert loaded.family == "Hugging Face ViT classifier" and loaded.adapter.labels == ("a", "b", "c")
    assert ge.explain_image(loaded, non_square_pixels(1, (32, 48)), "b", progress=False).scores.shape == (1, 1)
    tiny = ge.load_model("timm:vit_tiny_patch16_224", device="cpu")
    assert tiny.family == "timm ViT classifier" and tiny.adapter.labels[0] == "tench, Tinca tinca"
    with pytest.raises(UnsupportedModelError, match="global_pool='avg'"):
        ge.load_model("timm:vit_medium_patch16_gap_256", device="cpu")
    vision = ge.load_model("torchvision:vit_b_32", device="cpu")
    assert vision.family == "torchvision ViT classifier" and vision.adapter.num_classes == 1000
