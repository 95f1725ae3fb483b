"""The explorers' callbacks: setting a control programmatically redraws with exactly the new settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gradeclip_utils import explain_image, explain_text
from gradeclip_utils.export import FigureExporter
from gradeclip_utils.metrics import energy_pointing_game
from gradeclip_utils.synthetic import generate_scene
from gradeclip_utils.widgets import (GENERIC_CLASSES, Explorer, LayerViewer, MethodComparison, method_takes,
                                     scores_html, words_html)

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(5, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]),
            generate_scene(6, n_objects=2)]


@pytest.fixture()
def explorer(tiny, scenes):
    return Explorer(tiny, scenes, ["a red circle", "a blue square"], suggestions=["a star", "a green cross"])


def direct(tiny, scene, prompts, **options):
    return explain_image(tiny, scene.image, prompts, resolution="model", **options)


def test_first_render_uses_the_initial_settings(tiny, scenes, explorer):
    assert explorer.error is None and len(explorer.history) == 1
    assert explorer.last["image"] == "scene 5" and explorer.last["prompts"] == ["a red circle", "a blue square"]
    assert explorer.last["layers"] == [2] and explorer.last["mode"] == "faithful"
    assert explorer.last["method"] == "grad_eclip" and explorer.last["resolution"] == "model"
    assert bytes(explorer.view.value).startswith(PNG) and explorer.figure is not None
    expected = direct(tiny, scenes[0], ["a red circle", "a blue square"])
    assert torch.allclose(explorer.explanation.maps, expected.maps, atol=1e-6)
    assert explorer.last["scores"] == pytest.approx(expected.scores[0].tolist(), abs=1e-6)
    words = explain_text(tiny, scenes[0].image, ["a red circle", "a blue square"], layers=3, resolution="model")
    assert torch.allclose(explorer.text_explanation.word_importance, words.word_importance, atol=1e-6)
    assert "a blue square" in explorer.scores.value and "circle" in explorer.words.value


def test_layer_change_redraws_with_that_block(tiny, scenes, explorer):
    before = explorer.view.value
    explorer.layer.value = 0
    assert len(explorer.history) == 2 and explorer.last["layers"] == [0] and explorer.error is None
    expected = direct(tiny, scenes[0], ["a red circle", "a blue square"], layers=(0,))
    assert torch.allclose(explorer.explanation.maps, expected.maps, atol=1e-6)
    assert explorer.explanation.settings["layers"] == [0]
    assert explorer.view.value != before


def test_prompt_image_mode_and_method_changes(tiny, scenes, explorer):
    explorer.prompts.value = "a star\n\n  a blue square  \n"
    assert explorer.last["prompts"] == ["a star", "a blue square"]
    assert explorer.explanation.prompts == ["a star", "a blue square"]
    explorer.image.value = "scene 6"
    assert explorer.last["image"] == "scene 6"
    assert torch.allclose(explorer.explanation.maps, direct(tiny, scenes[1], ["a star", "a blue square"]).maps,
                          atol=1e-6)
    explorer.mode.value = "official"
    assert explorer.last["mode"] == "official" and explorer.explanation.settings["mode"] == "official"
    official = direct(tiny, scenes[1], ["a star", "a blue square"], mode="official")
    assert torch.allclose(explorer.explanation.maps, official.maps, atol=1e-6)
    explorer.method.value = "rollout"
    assert explorer.last["method"] == "rollout" and explorer.last["uses_layers"] is False
    rollout = direct(tiny, scenes[1], ["a star", "a blue square"], method="rollout", mode="official")
    assert torch.allclose(explorer.explanation.maps, rollout.maps, atol=1e-6)
    assert "does not use the block" in explorer.status.value
    assert explorer.last["text_method"] == "grad_eclip"  # rollout has no text version
    assert [h["method"] for h in explorer.history] == ["grad_eclip"] * 4 + ["rollout"]


def test_adding_a_suggestion_appends_it_and_renders_once(explorer):
    explorer.suggestions.value = "a green cross"
    assert explorer.last["prompts"] == ["a red circle", "a blue square", "a green cross"]
    assert explorer.suggestions.value == "(add a prompt)" and len(explorer.history) == 2
    explorer.suggestions.value = "a green cross"  # already there: nothing to redraw
    assert len(explorer.history) == 2


def test_errors_are_shown_and_cleared(explorer):
    png = explorer.view.value
    explorer.prompts.value = "  \n"
    assert explorer.error == "ValueError: type at least one prompt" and explorer.last["error"] == explorer.error
    assert "could not render" in explorer.status.value and explorer.view.value == png
    explorer.prompts.value = "a red circle"
    assert explorer.error is None and explorer.last["prompts"] == ["a red circle"]


def test_export_writes_a_manifest_of_the_current_view(explorer, tmp_path):
    explorer.layer.value = 1
    manifest = explorer.export(FigureExporter(tmp_path), "view")
    saved = json.loads((tmp_path / "view.json").read_text())
    assert saved == json.loads(json.dumps(manifest))
    assert saved["settings"]["layers"] == [1] and saved["method"] == "grad_eclip"
    assert saved["prompts"] == ["a red circle", "a blue square"] and saved["model"] == "tiny-test-clip"
    assert saved["images"][0]["seed"] == 5 and saved["images"][0]["name"] == "scene 5"
    assert saved["data"]["scores"] == pytest.approx(explorer.last["scores"])
    assert Image.open(tmp_path / "view.png").size[0] > 100


def test_unknown_methods_are_refused(tiny, scenes):
    with pytest.raises(ValueError, match="unknown image methods"):
        Explorer(tiny, scenes, ["a star"], method="nope", auto_render=False)
    with pytest.raises(ValueError, match="unknown image methods"):
        MethodComparison(tiny, scenes, ["a star"], methods=["grad_eclip", "nope"], auto_render=False)


def test_method_comparison_redraws_for_prompt_image_and_methods(tiny, scenes):
    comparison = MethodComparison(tiny, scenes, ["a red circle", "a blue square"],
                                  methods=["grad_eclip", "raw_attention", "clip_surgery"])
    assert comparison.error is None and [r["method"] for r in comparison.last["rows"]] == [
        "grad_eclip", "raw_attention", "clip_surgery"]
    # CLIP Surgery's class set for a model other than the synthetic one: "a photo of a {class}" over GENERIC_CLASSES
    with torch.no_grad():
        generic = tiny.model.encode_text(tiny.tokenize([f"a photo of a {c}" for c in GENERIC_CLASSES]))
    extra = {"clip_surgery": {"surgery_targets": torch.nn.functional.normalize(generic, dim=-1)}}
    for row in comparison.last["rows"]:
        raw = direct(tiny, scenes[0], ["a red circle"], method=row["method"], **extra.get(row["method"], {})).maps[0, 0]
        assert torch.allclose(comparison.explanations[row["method"]].maps[0, 0], raw, atol=1e-6)
        mass = raw.clamp(min=0).sum()
        expected = float(energy_pointing_game(raw, scenes[0].masks[0])) if mass > 0 else 0.0
        assert row["energy_on_prompted_objects"] == pytest.approx(expected, abs=1e-6)
    comparison.prompt.value = "a blue square"
    assert comparison.last["prompt"] == "a blue square"
    assert comparison.explanations["grad_eclip"].prompts == ["a blue square"]
    comparison.methods.value = ("rollout",)
    assert comparison.last["methods"] == ["rollout"] and list(comparison.explanations) == ["rollout"]
    comparison.image.value = "scene 6"
    assert comparison.last["image"] == "scene 6" and len(comparison.history) == 4
    comparison.methods.value = ()
    assert comparison.error == "ValueError: choose at least one method"


def test_layer_viewer_single_and_summed_blocks(tiny, scenes):
    viewer = LayerViewer(tiny, scenes[0], "a red circle")
    assert viewer.last["layers"] == [2] and bytes(viewer.view.value).startswith(PNG)
    viewer.layer.value = 0
    assert viewer.last["layers"] == [0]
    viewer.cumulative.value = True
    assert viewer.last["layers"] == [0, 1, 2] and viewer.last["cumulative"] is True
    summed = sum(torch.relu(viewer.maps[b].raw[0][0]) for b in (0, 1, 2))
    combined = direct(tiny, scenes[0], ["a red circle"], layers=[0, 1, 2]).maps[0, 0]
    assert torch.allclose(summed, combined, atol=1e-6)  # the viewer's sum is explain_image's combination
    viewer.layer.value = 1
    assert viewer.last["layers"] == [1, 2] and len(viewer.history) == 4


def test_method_takes_reads_the_signatures():
    assert method_takes("grad_eclip", "layers") and method_takes("grad_eclip", "mode")
    assert method_takes("grad_eclip_no_spatial", "layers")  # passes its options on to Grad-ECLIP
    assert not method_takes("rollout", "layers") and not method_takes("maskclip", "mode")


def test_html_views_escape_text(tiny, scenes):
    words = explain_text(tiny, scenes[0].image, ["a <b>red</b> circle"], layers=3)
    page = words_html(words)
    assert words.words[0][:4] == ["a", "<", "b", ">"]  # the tokenizer splits the tag into words
    assert "</b>" not in page and ">&lt;</span>" in page and ">&lt;/</span>" in page
    table = scores_html(["<i>x</i>", "y"], [0.1, 0.3])
    assert "&lt;i&gt;x" in table and "<b>0.3000</b>" in table
    assert np.isfinite(words.word_importance.numpy()).all()
