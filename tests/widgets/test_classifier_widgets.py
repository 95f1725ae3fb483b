"""The explorers on an image classifier (a random-weight timm ViT classifier and the same weights in a Hugging
Face ViTForImageClassification): classes instead of prompts, the model's own scores, methods it cannot run
refused with their reason in the widget, titles and manifests naming the classes and the score.

What the explorer draws is checked against ``explain_image`` called apart (with class indices where the
explorer was given names) and against the literal classifier of ``support.classifiers.reference``, on a
non-square picture at the model's native grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils.inputs import normalise
from gradeclip_utils.methods import get_spec, list_methods, refusal
from gradeclip_utils.widgets import Explorer, LayerViewer, MethodComparison, ModelComparisonView

from support.classifiers import reference, timm_classifier, to_hf
from support.families import relative

LABELS = ["tabby, tabby cat", "tiger cat", "whippet", "sports car", "car wheel", "goldfish", "tench, Tinca tinca",
          "great white shark", "hen", "ostrich"]
TOLERANCE = 1e-5
#: a non-square picture at the classifiers' native size (80 x 48: a 3 x 5 grid of 16-pixel patches)
PICTURE = Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 80, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def weights():
    return timm_classifier(image_size=(48, 80), seed=1)


@pytest.fixture(scope="module")
def classifiers(weights):
    """The same weights in both families, preprocessed alike (each family normalises with its own mean and
    std by default), so that their maps are the same."""
    timm_model = ge.wrap_model(weights, classes=LABELS, name="timm-vit")
    return {"timm": timm_model, "hf": ge.wrap_model(to_hf(weights), timm_model.preprocess, classes=LABELS,
                                                    name="hf-vit")}


def pixels_of(model) -> torch.Tensor:
    """The picture as the model sees it at native resolution (its size is a multiple of the patch already)."""
    array = torch.from_numpy(np.asarray(PICTURE).copy()).permute(2, 0, 1).float() / 255
    return normalise(array, *model.normalization)[None]


def map_panels(fig):
    return [ax for ax in fig.axes if len(ax.images) == 2]


@pytest.mark.parametrize("family", ["timm", "hf"])
def test_the_explorer_draws_the_chosen_classes(classifiers, weights, family):
    model = classifiers[family]
    explorer = Explorer(model, {"noise": PICTURE}, ["whippet", 8])
    assert explorer.error is None and explorer.explanation.prompts == ["whippet", "hen"]
    apart = ge.explain_image(model, PICTURE, [2, 8], progress=False)
    assert torch.allclose(explorer.explanation.maps, apart.maps, atol=1e-6)
    assert explorer.last["scores"] == pytest.approx(apart.scores[0].tolist(), abs=1e-6)
    logits, literal = reference(weights, pixels_of(model), [2, 8], resample=family)
    assert relative(torch.stack(explorer.explanation.raw), literal) < TOLERANCE
    assert relative(torch.tensor(explorer.last["scores"]), logits[0, [2, 8]]) < TOLERANCE
    panels = map_panels(explorer.figure)
    for k, ax in enumerate(panels):
        assert np.allclose(np.asarray(ax.images[1].get_array()), apart.heatmap(0, k), atol=1e-5)
    for ax, label, score in zip(panels, ["whippet", "hen"], explorer.last["scores"]):
        assert ax.get_title().startswith(f"{label}\nlogit = {ge.widgets.signed(score)}")
    # the controls and what stands beside the figure speak of classes and of the model's scores
    assert explorer.prompts.description == "classes" and explorer.score.options == (("logit", "logit"), ("probability", "probability"))
    assert explorer.score.value == "logit" and "score logit" in explorer.figure.get_suptitle()
    assert ">class</th>" in explorer.scores.value and "logit</th>" in explorer.scores.value
    assert "no word importance" in explorer.words.value and "no text tower" in explorer.words.value
    assert "2 classes" in explorer.status.value


def test_the_score_switch_offers_the_probability_over_all_classes(classifiers, weights):
    model = classifiers["timm"]
    explorer = Explorer(model, {"noise": PICTURE}, ["whippet", "hen"])
    logit_maps = explorer.explanation.maps.clone()
    explorer.score.value = "probability"
    want = ge.explain_image(model, PICTURE, [2, 8], score="probability", progress=False)
    assert explorer.error is None and explorer.explanation.settings["score"] == "probability"
    assert torch.allclose(explorer.explanation.maps, want.maps, atol=1e-6)
    assert not torch.allclose(explorer.explanation.maps, logit_maps, atol=1e-3)
    logits, literal = reference(weights, pixels_of(model), [2, 8], probability=True)
    assert relative(torch.stack(explorer.explanation.raw), literal) < TOLERANCE
    probabilities = logits.softmax(-1)[0, [2, 8]]  # the softmax over all ten classes, not between the two
    assert relative(torch.tensor(explorer.last["scores"]), probabilities) < TOLERANCE
    assert sum(explorer.last["scores"]) < 0.99
    assert "score probability" in explorer.status.value and "p (probability)" in explorer.scores.value
    assert all("\np = " in ax.get_title() for ax in map_panels(explorer.figure))
    explorer.method.value = "rollout"  # takes no score: its scores are the logits, and the switch is off
    assert explorer.score.disabled and "score: not used" in explorer.status.value
    assert relative(torch.tensor(explorer.last["scores"]), logits[0, [2, 8]]) < TOLERANCE


def test_methods_a_classifier_cannot_run_are_marked_and_refused_with_their_reason(classifiers):
    model = classifiers["timm"]
    refused = sorted(m for m in list_methods()["image"] if refusal(get_spec(m), model.adapter) is not None)
    assert refused == ["clip_surgery", "itm_gradcam", "itsm", "maskclip"]
    explorer = Explorer(model, {"noise": PICTURE}, ["whippet"])
    labels = dict((value, label) for label, value in explorer.method.options)
    # the matching head's Grad-CAM explains only a score the classifier does not give: not offered at all
    assert "itm_gradcam" not in labels
    refused.remove("itm_gradcam")
    assert all(labels[m] == f"{m} (not for this model)" for m in refused) and labels["grad_cam"] == "grad_cam"
    for method in refused:
        explorer.method.value = method
        assert explorer.figure is None and explorer.error.startswith("UnsupportedMethodError: ")
        assert f"{method} is not available for timm ViT classifier models" in explorer.error
        assert "a classifier&#x27;s targets are its classes" in explorer.status.value
        assert "Traceback" not in explorer.status.value
    explorer.method.value = "grad_cam"
    assert explorer.error is None and explorer.figure is not None
    # the methods side by side: the refused ones are not chosen by default; chosen, their row says why
    comparison = MethodComparison(model, {"noise": PICTURE}, ["whippet"])
    assert comparison.error is None and not set(comparison.methods.value) & set(refused)
    comparison.methods.value = ("grad_eclip", "maskclip")
    assert comparison.error is None and list(comparison.explanations) == ["grad_eclip"]
    assert "could not run: UnsupportedMethodError: maskclip is not available" in comparison.table.value


def test_classes_are_typed_as_names_or_indices_and_completed_from_the_labels(classifiers):
    explorer = Explorer(classifiers["timm"], {"noise": PICTURE}, ["whippet"], suggestions=["hen"])
    picker = explorer.suggestions
    assert picker.options[0] == "hen" and set(picker.options) == set(LABELS) and picker.value == ""
    picker.value = "ostrich"
    assert explorer.prompts.value == "whippet; ostrich" and picker.value == ""
    assert explorer.explanation.prompts == ["whippet", "ostrich"]
    explorer.prompts.value = "3; Tabby"
    assert explorer.explanation.prompts == ["sports car", "tabby, tabby cat"]
    explorer.prompts.value = "wippet"
    assert explorer.figure is None and "unknown class name 'wippet'" in explorer.error
    assert "close matches: 'whippet' (2)" in explorer.error
    explorer.prompts.value = "12"
    assert "class index 12 is out of range: this classifier has 10 classes" in explorer.error


def test_the_export_manifest_names_the_model_kind_the_classes_and_the_score(classifiers, tmp_path):
    explorer = Explorer(classifiers["hf"], {"noise": PICTURE}, ["whippet", 8], score="probability")
    manifest = explorer.export_to_folder(tmp_path)
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    for record in (manifest, written):
        assert record["model_kind"] == "classifier" and record["score"] == "probability"
        assert record["classes"] == [{"index": 2, "label": "whippet"}, {"index": 8, "label": "hen"}]
        assert record["model"] == "hf-vit" and record["method"] == "grad_eclip"
        assert "score probability" in record["title"]
    explorer.method.value = "rollout"  # no score of its own: its values are the logits
    assert explorer.export_to_folder(tmp_path / "rollout")["score"] == "logit"


def test_the_method_comparison_and_the_layer_viewer_name_the_class_and_its_score(classifiers):
    model = classifiers["timm"]
    comparison = MethodComparison(model, {"noise": PICTURE}, [2], ["grad_eclip", "grad_cam"], score="probability")
    assert comparison.error is None and comparison.prompt.description == "class"
    assert comparison.figure.get_suptitle().startswith("\u201cwhippet\u201d (class 2) on noise \u00b7 p = ")
    assert "p (probability)</th>" in comparison.table.value
    want = ge.explain_image(model, PICTURE, [2], score="probability", progress=False)
    assert torch.allclose(comparison.explanations["grad_eclip"].maps, want.maps, atol=1e-6)
    viewer = LayerViewer(model, PICTURE, "whippet")
    logit = float(ge.explain_image(model, PICTURE, [2], progress=False).scores[0, 0])
    assert f"logit = {ge.widgets.signed(logit)}" in viewer.status.value
    assert viewer.figure.get_suptitle().startswith("\u201cwhippet\u201d (class 2) on image")


def test_the_models_view_takes_classifiers_and_says_when_a_mix_cannot_work(classifiers, tiny):
    view = ModelComparisonView(classifiers, {"noise": PICTURE}, ["whippet", "8"])
    assert view.error is None and view.prompts.description == "classes"
    want = ge.compare_models(classifiers, PICTURE, ["whippet", 8])
    assert np.allclose(view.last["scores"], want.scores[:, 0].numpy(), atol=1e-6)
    assert view.last["agreement"]["whippet"][0][1] == pytest.approx(1.0, abs=1e-4)  # the same weights
    assert "timm: timm ViT classifier (logit)" in view.figure.get_suptitle()
    # beside a CLIP: the same typed targets, each model its own default score
    mixed = ModelComparisonView({"vit": classifiers["timm"], "clip": tiny}, {"noise": PICTURE}, ["whippet", "hen"])
    assert mixed.error is None and mixed.prompts.description == "targets"
    titles = [ax.get_title() for ax in map_panels(mixed.figure)]
    assert titles[0].startswith("vit\nwhippet\nlogit = ") and titles[2].startswith("clip\nwhippet\nS = ")
    clip = ge.explain_image(tiny, PICTURE, ["whippet", "hen"], progress=False)
    assert np.allclose(mixed.last["scores"][1], clip.scores[0].numpy(), atol=1e-6)
    mixed.prompts.value = "whippet; 8"
    assert "'8': a class index means nothing to clip" in mixed.error
    mixed.prompts.value = "a red circle"
    assert "model 'vit': unknown class name 'a red circle'" in mixed.error
    mixed.prompts.value = "whippet"
    mixed.method.value = "maskclip"
    assert dict((v, k) for k, v in mixed.method.options)["maskclip"] == "maskclip (not for vit)"
    assert "model 'vit': maskclip is not available for timm ViT classifier models" in mixed.error
    with pytest.raises(ValueError, match=r"score='cosine' is not a score of model 'vit' \(its scores: logit, "
                                         r"probability\)"):
        ModelComparisonView({"vit": classifiers["timm"], "clip": tiny}, [PICTURE], ["whippet"], score="cosine")


def test_the_models_view_manifest_says_each_models_kind_score_and_classes(classifiers, tiny, tmp_path):
    view = ModelComparisonView({"vit": classifiers["timm"], "clip": tiny}, {"noise": PICTURE}, ["whippet", "hen"])
    models = view.export_to_folder(tmp_path)["data"]["models"]
    assert models == [{"name": "vit", "model_kind": "classifier", "score": "logit",
                       "classes": [{"index": 2, "label": "whippet"}, {"index": 8, "label": "hen"}]},
                      {"name": "clip", "model_kind": "clip", "score": "cosine", "classes": None}]
