"""The explorers on SigLIP and BLIP through transformers (random weights, saved to folders with their tokenizers
and loaded offline): the score switch offers the model's own scores with its default chosen, what the explorer
draws equals ``explain_image`` called apart, and the manifests name the family and the score the values are
(also for a method that explains no score, whose values are the model's default: SigLIP's logit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils.widgets import Explorer, MethodComparison, ModelComparisonView

from support.blip import save_blip
from support.siglip import save

PROMPTS = ["a red circle", "a photo of a dog"]
#: a non-square picture (80 x 48: a 3 x 5 grid of 16-pixel patches at native resolution)
PICTURE = Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 80, 3), dtype=np.uint8))
SCORES = {"siglip": ("logit", "probability", "cosine", "contrast"), "blip": ("itc", "itm", "contrast")}
FAMILIES = {"siglip": "Hugging Face SigLIP", "blip": "Hugging Face BLIP"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    siglip, blip = tmp_path_factory.mktemp("siglip"), tmp_path_factory.mktemp("blip")
    save(siglip)
    save_blip(blip, image_size=64)
    return {name: ge.load_model(f"hf:{folder}", device="cpu") for name, folder in (("siglip", siglip), ("blip", blip))}


def map_panels(fig):
    return [ax for ax in fig.axes if len(ax.images) == 2]


@pytest.mark.parametrize("name", ["siglip", "blip"])
def test_the_explorer_offers_the_models_scores_and_draws_explain_image(models, name, tmp_path):
    model = models[name]
    explorer = Explorer(model, {"noise": PICTURE}, PROMPTS)
    assert explorer.error is None and tuple(v for _, v in explorer.score.options) == SCORES[name]
    assert explorer.score.value == SCORES[name][0]  # the model's default
    apart = ge.explain_image(model, PICTURE, PROMPTS, progress=False)
    assert apart.settings["score"] == SCORES[name][0]
    assert torch.allclose(explorer.explanation.maps, apart.maps, atol=1e-6)
    assert explorer.last["scores"] == pytest.approx(apart.scores[0].tolist(), abs=1e-6)
    for k, ax in enumerate(map_panels(explorer.figure)):
        assert np.allclose(np.asarray(ax.images[1].get_array()), apart.heatmap(0, k), atol=1e-5)
    assert f"score {SCORES[name][0]}" in explorer.figure.get_suptitle()
    manifest = explorer.export_to_folder(tmp_path)
    written = json.loads(next(tmp_path.glob("*.json")).read_text())
    for record in (manifest, written):
        assert record["settings"]["family"] == FAMILIES[name] and record["model_kind"] == "clip"
        assert record["score"] == SCORES[name][0] and record["method"] == "grad_eclip"
    explorer.method.value = "rollout"  # explains no score: its values are the model's default (SigLIP's logit)
    rollout = ge.explain_image(model, PICTURE, PROMPTS, method="rollout", progress=False)
    assert explorer.error is None and explorer.last["scores"] == pytest.approx(rollout.scores[0].tolist(), abs=1e-6)
    assert torch.allclose(rollout.scores, apart.scores, atol=1e-6)
    assert explorer.export_to_folder(tmp_path / "rollout")["score"] == SCORES[name][0]
    assert explorer.last["symbol"] == {"siglip": "logit", "blip": "S"}[name]


def test_the_score_switch_explains_siglips_probability_and_blips_match(models):
    siglip = Explorer(models["siglip"], {"noise": PICTURE}, PROMPTS)
    siglip.score.value = "probability"
    want = ge.explain_image(models["siglip"], PICTURE, PROMPTS, score="probability", progress=False)
    assert siglip.error is None and torch.allclose(siglip.explanation.maps, want.maps, atol=1e-6)
    logits = ge.explain_image(models["siglip"], PICTURE, PROMPTS, progress=False).scores[0]
    assert siglip.last["scores"] == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-6)  # each pair's own
    blip = Explorer(models["blip"], {"noise": PICTURE}, PROMPTS, method="itm_gradcam", score="itm")
    want = ge.explain_image(models["blip"], PICTURE, PROMPTS, method="itm_gradcam", progress=False)
    assert blip.error is None and want.settings["score"] == "itm"
    assert torch.allclose(blip.explanation.maps, want.maps, atol=1e-6)
    assert blip.last["scores"] == pytest.approx(want.scores[0].tolist(), abs=1e-6)
    blip.method.value = "grad_eclip"  # a class-token method: the score switch follows it to BLIP's ITC
    assert blip.score.value == "itc" and blip.error is None and blip.last["method"] == "grad_eclip"
    itc = ge.explain_image(models["blip"], PICTURE, PROMPTS, progress=False)
    assert torch.allclose(blip.explanation.maps, itc.maps, atol=1e-6)
    blip.score.value = "itm"  # the ITM is no class-token score: refused with its reason, no figure
    assert blip.figure is None and "grad_eclip cannot explain score='itm'" in blip.error
    assert "explain it with itm_gradcam" in blip.error
    blip.method.value = "itm_gradcam"  # and back: the switch follows the matching head's method to the ITM
    assert blip.score.value == "itm" and blip.error is None
    assert torch.allclose(blip.explanation.maps, want.maps, atol=1e-6)


@pytest.mark.parametrize("name", ["siglip", "blip"])
def test_the_method_comparison_explains_the_models_default(models, name):
    model = models[name]
    comparison = MethodComparison(model, {"noise": PICTURE}, PROMPTS[:1], ["grad_eclip", "grad_cam"])
    assert comparison.error is None and comparison.score == SCORES[name][0]
    for method in ("grad_eclip", "grad_cam"):
        want = ge.explain_image(model, PICTURE, PROMPTS[:1], method=method, progress=False)
        assert torch.allclose(comparison.explanations[method].maps, want.maps, atol=1e-6)
    assert {"siglip": ">logit</th>", "blip": ">S (cosine)</th>"}[name] in comparison.table.value


def test_the_models_view_explains_each_models_default_and_says_so(models, tmp_path):
    view = ModelComparisonView(models, {"noise": PICTURE}, PROMPTS)
    assert view.error is None
    for m, name in enumerate(models):
        want = ge.explain_image(models[name], PICTURE, PROMPTS, progress=False)
        assert np.allclose(view.last["scores"][m], want.scores[0].numpy(), atol=1e-6)
    suptitle = view.figure.get_suptitle()
    assert "siglip: Hugging Face SigLIP (logit)" in suptitle and "blip: Hugging Face BLIP (itc)" in suptitle
    described = view.export_to_folder(tmp_path)["data"]["models"]
    assert described == [{"name": "siglip", "model_kind": "clip", "score": "logit", "classes": None},
                         {"name": "blip", "model_kind": "clip", "score": "itc", "classes": None}]
    with pytest.raises(ValueError, match=r"score='logit' is not a score of model 'blip' \(its scores: itc, itm, "
                                         r"contrast\)"):
        ModelComparisonView(models, [PICTURE], PROMPTS, score="logit")
