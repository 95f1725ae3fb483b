"""The explorers: setting a control redraws with exactly the new settings; browser changes are debounced
and show a busy state; errors replace stale output; figures keep their text size, say what they show,
and scale the maps as they claim."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_hex
from PIL import Image

import gradeclip_utils
from gradeclip_utils import explain_image, explain_text
from gradeclip_utils.export import FigureExporter
from gradeclip_utils.metrics import energy_pointing_game
from gradeclip_utils.plotting import PANEL_DPI, PANEL_INCHES, SUPTITLE_POINTS, TITLE_POINTS, NEGATIVE_COLOUR
from gradeclip_utils.synthetic import generate_scene
from gradeclip_utils.widgets import (GENERIC_CLASSES, Explorer, LayerViewer, MethodComparison, ModelComparisonView,
                                     method_takes, scores_html, signed, words_html)

PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(5, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]),
            generate_scene(6, n_objects=2)]


@pytest.fixture()
def explorer(tiny, scenes):
    return Explorer(tiny, scenes, ["a red circle", "a blue square"], suggestions=["a star", "a green cross"])


@pytest.fixture(scope="module")
def synthetic():
    return gradeclip_utils.load_model("synthetic", device="cpu")


def direct(tiny, scene, prompts, **options):
    return explain_image(tiny, scene.image, prompts, resolution="model", **options)


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(bytes(data))) as picture:
        return picture.size


def map_panels(fig):
    """The axes that hold a heat map (an input picture and an overlay), in drawing order."""
    return [ax for ax in fig.axes if len(ax.images) == 2]


def browser_burst(changes, wait: float):
    """Apply ``(widget, {name: value})`` changes as browser messages do (``set_state``), inside a running
    event loop, then let the loop run for ``wait`` seconds."""
    async def run():
        for widget, state in changes:
            widget.set_state(state)
        await asyncio.sleep(wait)

    asyncio.run(run())


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
    assert "grad_eclip \u00b7 block 2 \u00b7 faithful mode \u00b7 fp32" in explorer.status.value
    assert "rendering" not in explorer.status.value and "gradeclip-stale" not in explorer.view._dom_classes


def test_layer_change_redraws_with_that_block(tiny, scenes, explorer):
    before = explorer.view.value
    explorer.layer.value = 0
    assert len(explorer.history) == 2 and explorer.last["layers"] == [0] and explorer.error is None
    expected = direct(tiny, scenes[0], ["a red circle", "a blue square"], layers=(0,))
    assert torch.allclose(explorer.explanation.maps, expected.maps, atol=1e-6)
    assert explorer.explanation.settings["layers"] == [0]
    assert explorer.view.value != before and "block 0" in explorer.figure.get_suptitle()


def test_prompt_image_mode_and_method_changes(tiny, scenes, explorer):
    explorer.prompts.value = "a star;;  a blue square  ; "
    assert explorer.last["prompts"] == ["a star", "a blue square"]
    assert explorer.explanation.prompts == ["a star", "a blue square"]
    explorer.prompts.value = "a star\na blue square"  # a pasted list, one per line, reads the same
    assert explorer.last["prompts"] == ["a star", "a blue square"]
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
    # rollout takes no mode: the explorer runs it in the default one (and one cached map serves every mode)
    rollout = direct(tiny, scenes[1], ["a star", "a blue square"], method="rollout")
    assert torch.allclose(explorer.explanation.maps, rollout.maps, atol=1e-6)
    assert "does not use the block" in explorer.status.value
    assert "rollout \u00b7 block: not used \u00b7 mode: not used" in explorer.figure.get_suptitle()
    assert explorer.last["text_method"] == "grad_eclip"  # rollout has no text version
    assert [h["method"] for h in explorer.history] == ["grad_eclip"] * 5 + ["rollout"]


def test_apply_redraws_and_prompts_with_the_separator_are_refused(tiny, scenes, explorer):
    explorer.apply.click()
    assert len(explorer.history) == 2 and explorer.last["prompts"] == ["a red circle", "a blue square"]
    assert explorer.apply.description == "apply"
    with pytest.raises(ValueError, match="cannot contain"):
        Explorer(tiny, scenes, ["a red circle; a blue square"], auto_render=False)


def test_adding_a_suggestion_appends_it_and_renders_once(explorer):
    explorer.suggestions.value = "a green cross"
    assert explorer.last["prompts"] == ["a red circle", "a blue square", "a green cross"]
    assert explorer.suggestions.value == "(add a prompt)" and len(explorer.history) == 2
    explorer.suggestions.value = "a green cross"  # already there: nothing to redraw
    assert len(explorer.history) == 2


def test_errors_replace_the_stale_output(explorer, tmp_path):
    assert explorer.scores.value and explorer.words.value
    explorer.prompts.value = "  ;  "
    assert explorer.error == "ValueError: type at least one prompt (separate several with ';')"
    assert explorer.last["error"] == explorer.error and "could not render" in explorer.status.value
    assert explorer.view.value == b"" and explorer.view.layout.display == "none"
    assert explorer.scores.value == "" and explorer.words.value == "" and explorer.figure is None
    with pytest.raises(RuntimeError, match="last render failed"):
        explorer.export(FigureExporter(tmp_path), "stale")
    explorer.prompts.value = "a red circle"
    assert explorer.error is None and explorer.last["prompts"] == ["a red circle"]
    assert bytes(explorer.view.value).startswith(PNG) and explorer.view.layout.display is None
    assert "a red circle" in explorer.scores.value


def test_a_burst_of_browser_changes_draws_once_with_the_last_state(tiny, scenes):
    explorer = Explorer(tiny, scenes, ["a red circle"], debounce=0.2)
    seen = []

    async def run():
        for value in (0, 1, 0, 1):
            explorer.layer.set_state({"value": value})  # what a browser message does
        seen.append((explorer.pending, explorer.status.value, list(explorer.view._dom_classes),
                     explorer.apply.description, len(explorer.history)))
        methods = list(explorer.method.options)
        explorer.method.set_state({"index": methods.index("rollout")})  # selection widgets send an index
        explorer.method.set_state({"index": methods.index("grad_eclip")})
        await asyncio.sleep(0.6)

    asyncio.run(run())
    pending, status, classes, button, renders = seen[0]
    assert pending and renders == 1  # nothing drawn yet
    assert "rendering" in status and "block 1" in status and "gradeclip-stale" in classes and button != "apply"
    assert len(explorer.history) == 2 and explorer.last["layers"] == [1] and explorer.last["method"] == "grad_eclip"
    assert [h["method"] for h in explorer.history] == ["grad_eclip", "grad_eclip"]  # rollout was never drawn
    assert not explorer.pending and "gradeclip-stale" not in explorer.view._dom_classes
    assert explorer.apply.description == "apply" and "rendering" not in explorer.status.value
    expected = direct(tiny, scenes[0], ["a red circle"], layers=(1,))
    assert torch.allclose(explorer.explanation.maps, expected.maps, atol=1e-6)


def test_code_changes_draw_at_once_also_inside_an_event_loop(tiny, scenes):
    explorer = Explorer(tiny, scenes, ["a red circle"], debounce=5.0)

    async def run():
        explorer.layer.value = 0
        return explorer.pending, explorer.last["layers"]

    assert asyncio.run(run()) == (False, [0])
    assert len(explorer.history) == 2


def test_method_list_clicks_are_debounced_and_each_map_is_computed_once(tiny, scenes, monkeypatch):
    comparison = MethodComparison(tiny, scenes, ["a red circle"], methods=["grad_eclip"], debounce=0.2)
    calls = []
    real = gradeclip_utils.explain_image
    monkeypatch.setattr(gradeclip_utils, "explain_image",
                        lambda *args, **kwargs: calls.append(kwargs["method"]) or real(*args, **kwargs))
    options = list(comparison.methods.options)
    browser_burst([(comparison.methods, {"index": [options.index("grad_eclip"), options.index("rollout")]}),
                   (comparison.methods, {"index": [options.index(m) for m in ("grad_eclip", "rollout",
                                                                                "raw_attention")]})], wait=0.6)
    assert len(comparison.history) == 2 and comparison.last["methods"] == ["grad_eclip", "rollout", "raw_attention"]
    assert calls == ["rollout", "raw_attention"]  # grad_eclip's map was kept
    comparison.methods.value = ("rollout",)
    assert calls == ["rollout", "raw_attention"] and list(comparison.explanations) == ["rollout"]


def test_figures_keep_text_size_and_never_overlap(synthetic):
    scene = generate_scene(2024, n_objects=3)
    prompts = ["a red circle", "a blue square", "a green triangle with a longer description than most", "a star",
               "a purple cross", "two shapes", "an orange square"]
    panel_px = PANEL_INCHES * PANEL_DPI
    seen = set()
    for count in (1, 4, 7):
        explorer = Explorer(synthetic, [scene], prompts[:count], width=900)
        fig = explorer.figure
        width, height = png_size(explorer.view.value)
        assert width <= 900 and explorer.view.layout.width == f"{width}px"  # shown at its own pixel size
        assert (width, height) == tuple(np.round(fig.get_size_inches() * fig.dpi).astype(int))
        panels = map_panels(fig)
        assert len(panels) == count
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes[:count + 1]:
            box = ax.get_window_extent(renderer)
            assert box.width == pytest.approx(panel_px, abs=1) and box.height == pytest.approx(panel_px, abs=1)
        texts = [fig._suptitle] + [ax.title for ax in fig.axes[:count + 1]]
        sizes = {t.get_fontsize() for t in texts[1:]}
        assert fig._suptitle.get_fontsize() == SUPTITLE_POINTS and sizes == {TITLE_POINTS}
        boxes = [t.get_window_extent(renderer) for t in texts] + [ax.get_window_extent(renderer) for ax in fig.axes]
        for a, b in itertools.combinations(range(len(boxes)), 2):
            assert not boxes[a].overlaps(boxes[b]), (count, a, b)
        for box in boxes:  # everything inside the figure
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5
        seen.add(fig._suptitle.get_fontsize())
    assert seen == {SUPTITLE_POINTS}


def test_panel_and_shared_scales_show_the_maps_as_claimed(tiny, scenes):
    explorer = Explorer(tiny, scenes, ["a red circle", "a blue square", "a star"])
    panels = map_panels(explorer.figure)
    for k, ax in enumerate(panels):  # each panel min-max normalised on its own: the results' own heat map
        shown = np.asarray(ax.images[1].get_array())
        assert np.allclose(shown, explorer.explanation.heatmap(0, k), atol=1e-5)
        assert ax.images[1].norm.vmin == 0 and ax.images[1].norm.vmax == 1
    assert "each panel" in explorer.figure.axes[-1].get_ylabel()
    explorer.shared.value = True
    assert explorer.last["shared_scale"] is True
    picture = explorer.explanation.images[0]
    raw = explorer.explanation.raw[0]
    literal = F.interpolate(raw[:, None], size=(picture.height, picture.width), mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    low, high = min(0.0, float(literal.min())), float(literal.max())
    for k, ax in enumerate(map_panels(explorer.figure)):
        assert np.allclose(np.asarray(ax.images[1].get_array()), literal[k], atol=1e-6)
        assert ax.images[1].norm.vmin == pytest.approx(low) and ax.images[1].norm.vmax == pytest.approx(high)
    colourbar = explorer.figure.axes[-1]
    assert "one scale" in colourbar.get_ylabel() and colourbar.get_ylim() == pytest.approx((low, high))
    assert "one colour scale for all prompts" in explorer.figure.get_suptitle()


def test_the_sign_of_s_is_visible(synthetic):
    scene = generate_scene(5, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}])
    prompts = ["a blue square", "a yellow cross"]
    explorer = Explorer(synthetic, [scene], prompts)
    scores = explain_image(synthetic, scene.image, prompts, resolution="model").scores[0]
    assert float(scores[0]) > 0 > float(scores[1])  # the scene has a blue square and no yellow cross
    titles = [ax.title for ax in map_panels(explorer.figure)]
    assert f"S = {signed(float(scores[1]))}" in titles[1].get_text() and "\u2212" in titles[1].get_text()
    assert to_hex(titles[1].get_color()) == NEGATIVE_COLOUR and to_hex(titles[0].get_color()) == "#000000"
    frames = [any(patch.get_gid() == "flag" and to_hex(patch.get_edgecolor()) == NEGATIVE_COLOUR
                  for patch in ax.patches) for ax in map_panels(explorer.figure)]
    assert frames == [False, True]
    assert f"color:#b03a2e'>{signed(float(scores[1]), 4)}" in explorer.scores.value
    assert "S &lt; 0" in explorer.scores.value


def test_export_writes_a_manifest_of_the_current_view(explorer, tmp_path):
    explorer.layer.value = 1
    manifest = explorer.export(FigureExporter(tmp_path), "view")
    saved = json.loads((tmp_path / "view.json").read_text())
    assert saved == json.loads(json.dumps(manifest))
    assert saved["settings"]["layers"] == [1] and saved["method"] == "grad_eclip"
    assert saved["prompts"] == ["a red circle", "a blue square"] and saved["model"] == "tiny-test-clip"
    assert saved["images"][0]["seed"] == 5 and saved["images"][0]["name"] == "scene 5"
    assert saved["data"]["scores"] == pytest.approx(explorer.last["scores"])
    assert saved["title"].startswith("grad_eclip \u00b7 block 1 \u00b7 faithful mode \u00b7 fp32")
    assert Image.open(tmp_path / "view.png").size[0] > 100
    explorer.mode.value = "official"
    official = explorer.export(FigureExporter(tmp_path), "official")
    assert "official mode" in official["title"] and official["settings"]["mode"] == "official"
    pdf = (tmp_path / "official.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")


def test_unknown_methods_are_refused(tiny, scenes):
    with pytest.raises(ValueError, match="unknown image methods"):
        Explorer(tiny, scenes, ["a star"], method="nope", auto_render=False)
    with pytest.raises(ValueError, match="unknown image methods"):
        MethodComparison(tiny, scenes, ["a star"], methods=["grad_eclip", "nope"], auto_render=False)
    with pytest.raises(ValueError, match="width"):
        Explorer(tiny, scenes, ["a star"], width=50, auto_render=False)


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
    title = comparison.figure.get_suptitle()
    assert "\u201ca red circle\u201d on scene 5" in title and "block 2" in title and "faithful mode" in title
    comparison.prompt.value = "a blue square"
    assert comparison.last["prompt"] == "a blue square"
    assert comparison.explanations["grad_eclip"].prompts == ["a blue square"]
    comparison.methods.value = ("rollout",)
    assert comparison.last["methods"] == ["rollout"] and list(comparison.explanations) == ["rollout"]
    comparison.image.value = "scene 6"
    assert comparison.last["image"] == "scene 6" and len(comparison.history) == 4
    comparison.methods.value = ()
    assert comparison.error == "ValueError: choose at least one method"
    assert comparison.table.value == "" and comparison.view.value == b"" and comparison.figure is None


def test_comparison_table_columns_line_up_and_say_why_a_value_is_missing(tiny, scenes):
    comparison = MethodComparison(tiny, scenes, ["a yellow star"], methods=["grad_eclip", "rollout"])
    page = comparison.table.value
    header = page.split("</tr>")[0]
    rows = [r for r in page.split("</tr>")[1:] if "<td" in r and "colspan" not in r]
    assert len(rows) == 2
    head_styles = [cell.split("'")[1] for cell in header.split("<th style=")[1:]]
    for row in rows:
        cell_styles = [cell.split("'")[1].split(";color")[0] for cell in row.split("<td style=")[1:]]
        assert cell_styles == head_styles  # the same count and alignment in every row as in the header
        assert "n/a" in row
    assert "no object of this scene matches the prompt" in page
    assert comparison.last["no_mask_reason"] == "no object of this scene matches the prompt"
    assert "energy n/a" in " ".join(ax.title.get_text() for ax in map_panels(comparison.figure))


def test_layer_viewer_single_and_summed_blocks(tiny, scenes):
    viewer = LayerViewer(tiny, scenes[0], "a red circle")
    assert viewer.last["layers"] == [2] and bytes(viewer.view.value).startswith(PNG)
    assert "grad_eclip \u00b7 block 2 \u00b7 faithful mode \u00b7 fp32" in viewer.figure.get_suptitle()
    viewer.layer.value = 0
    assert viewer.last["layers"] == [0]
    viewer.cumulative.value = True
    assert viewer.last["layers"] == [0, 1, 2] and viewer.last["cumulative"] is True
    assert "blocks 0\u20132 (sum)" in viewer.figure.get_suptitle()
    summed = sum(torch.relu(viewer.maps[b].raw[0][0]) for b in (0, 1, 2))
    combined = direct(tiny, scenes[0], ["a red circle"], layers=[0, 1, 2]).maps[0, 0]
    assert torch.allclose(summed, combined, atol=1e-6)  # the viewer's sum is explain_image's combination
    viewer.layer.value = 1
    assert viewer.last["layers"] == [1, 2] and len(viewer.history) == 4
    assert viewer.cumulative.indent is False and viewer.cumulative.layout.width == "auto"  # label not cut off


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
    assert "&lt;i&gt;x" in table and "<b>+0.3000</b>" in table
    assert np.isfinite(words.word_importance.numpy()).all()
    assert signed(-0.5) == "\u22120.500" and signed(0.25, 2) == "+0.25"


def test_object_prompts_name_each_object_the_scene_has_once():
    from gradeclip_utils.studies.common import object_prompts, prompt_mask

    scene = generate_scene(7, objects=[{"shape": "circle", "colour": "red"}, {"shape": "circle", "colour": "red"},
                                       {"shape": "square", "colour": "orange"}])
    assert object_prompts(scene) == ["an orange square"]  # the two red circles share a name: left out
    for seed in range(2024, 2030):
        scene = generate_scene(seed, n_objects=2 + seed % 3)
        names = [f"{o.colour} {o.shape}" for o in scene.objects]
        expected = [n for n in names if names.count(n) == 1]
        prompts = object_prompts(scene)
        assert [p.split(" ", 1)[1] for p in prompts] == expected
        assert all(prompt_mask(scene, p) is not None for p in prompts)  # each one's energy can be measured


def test_a_viewer_without_the_widget_manager_reads_what_the_explorer_is(explorer):
    bundle = explorer.widget._repr_mimebundle_()
    assert bundle["text/plain"].startswith("Explorer: an interactive widget") and "VBox(" not in bundle["text/plain"]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


def test_a_method_that_cannot_run_is_reported_and_the_others_drawn(tiny, scenes, monkeypatch):
    real = gradeclip_utils.explain_image

    def refusing(*args, **kwargs):
        if kwargs["method"] == "rollout":
            raise NotImplementedError("rollout is not available for this family")
        return real(*args, **kwargs)

    monkeypatch.setattr(gradeclip_utils, "explain_image", refusing)
    comparison = MethodComparison(tiny, scenes, ["a red circle"], methods=["grad_eclip", "rollout", "raw_attention"])
    assert comparison.error is None and [r["method"] for r in comparison.last["rows"]] == ["grad_eclip", "raw_attention"]
    assert comparison.last["failed"] == {"rollout": "NotImplementedError: rollout is not available for this family"}
    assert len(map_panels(comparison.figure)) == 2 and "not drawn" in comparison.figure.get_suptitle()
    assert "could not run: NotImplementedError: rollout is not available" in comparison.table.value
    assert "1 method could not run" in comparison.status.value
    comparison.methods.value = ("rollout",)
    assert comparison.error.startswith("ValueError: no chosen method could run: rollout")
    assert comparison.figure is None and comparison.view.value == b""


def test_a_redraw_in_place_draws_what_a_new_figure_draws(tiny, scenes):
    def pixels(data):
        with Image.open(io.BytesIO(bytes(data))) as picture:
            return np.asarray(picture.convert("RGB"))

    explorer = Explorer(tiny, scenes, ["a red circle", "a blue square"])
    first = explorer.figure
    explorer.layer.value = 0
    explorer.shared.value = True
    assert explorer.figure is first  # the same layout: updated in place
    fresh = Explorer(tiny, scenes, ["a red circle", "a blue square"], layer=0, shared_scale=True)
    assert fresh.figure is not first and np.array_equal(pixels(explorer.view.value), pixels(fresh.view.value))
    explorer.prompts.value = "a red circle; a blue square; a star"  # one more panel: a new figure
    assert explorer.figure is not first and len(map_panels(explorer.figure)) == 3


def test_controls_a_method_ignores_are_disabled(tiny, scenes):
    explorer = Explorer(tiny, scenes, ["a red circle"], auto_render=False)
    assert not explorer.layer.disabled and not explorer.mode.disabled
    for method, block, mode in (("rollout", True, True), ("rise", True, True), ("raw_attention", False, True),
                                ("grad_eclip", False, False)):
        explorer.method.value = method
        assert (explorer.layer.disabled, explorer.mode.disabled) == (block, mode), method
        assert (explorer.layer.tooltip is not None) == block
    explorer.method.value = "rollout"
    explorer.layer.value = 0  # from code it still sets (and the map stays the rollout's one)
    assert explorer.last["layers"] == [0] and "block: not used" in explorer.status.value
    view = ModelComparisonView({"one": tiny, "two": tiny}, scenes, ["a red circle"], method="legrad")
    assert view.mode.disabled and view.error is None
    assert "legrad \u00b7 block: not used \u00b7 mode: not used" in view.status.value
    assert "last block" not in view.figure.get_suptitle() and "official" not in view.figure.get_suptitle()
    view.method.value = "grad_eclip"
    assert not view.mode.disabled and "grad_eclip \u00b7 last block \u00b7 faithful mode" in view.status.value
    view.method.value = "legrad"
    view.mode.value = "official"  # a mode the method does not take: not refused, the cached comparison drawn
    assert view.error is None and "mode: not used" in view.status.value


def test_changes_during_a_slow_render_draw_once_more_and_the_outdated_figure_is_never_shown(tiny, scenes):
    explorer = Explorer(tiny, scenes, ["a red circle"], debounce=0.05)
    real, computed, shown, seen = explorer.compute, [], [], {}

    def slow(state):
        computed.append((state["layers"][0], state["mode"]))
        time.sleep(0.8)
        return real(state)

    explorer.compute = slow
    explorer.view.observe(lambda change: shown.append(explorer.last and explorer.last["layers"]), names="value")

    async def run():
        explorer.layer.set_state({"value": 0})
        await asyncio.sleep(0.3)  # the render of block 0 is computing, off the event loop
        seen["computing"] = explorer.computing
        for value in (1, 0, 1):
            explorer.layer.set_state({"value": value})  # arrive while it computes
        explorer.mode.set_state({"index": 1})  # official
        await asyncio.sleep(0.2)
        seen["status"], seen["classes"] = explorer.status.value, list(explorer.view._dom_classes)
        seen["renders"] = len(explorer.history)
        while explorer.computing or explorer.pending:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)

    asyncio.run(run())
    assert seen["computing"] and seen["renders"] == 1  # nothing drawn while computing
    assert "outdated" in seen["status"] and "block 1" in seen["status"] and "official mode" in seen["status"]
    assert "gradeclip-stale" in seen["classes"]
    assert computed == [(0, "faithful"), (1, "official")]  # the burst: one more render, with the last state
    assert len(explorer.history) == 2 and explorer.last["layers"] == [1] and explorer.last["mode"] == "official"
    assert len(shown) == 1  # block 0's figure, outdated when it was ready, was never shown
    assert "rendering" not in explorer.status.value and "gradeclip-stale" not in explorer.view._dom_classes
    expected = direct(tiny, scenes[0], ["a red circle"], layers=(1,), mode="official")
    assert torch.allclose(explorer.explanation.maps, expected.maps, atol=1e-6)


def test_a_prompt_with_no_words_is_flagged_and_never_the_best(tiny, scenes):
    table = scores_html(["?!...,", "a cat"], [0.5, 0.1])
    assert "<b>+0.1000</b>" in table and "(no words)" in table and "never the best" in table
    explorer = Explorer(tiny, scenes, ["?!...,", ":", "a red circle"])
    assert explorer.error is None and explorer.last["no_words"] == ["?!...,", ":"]
    titles = [ax.title.get_text() for ax in map_panels(explorer.figure)]
    assert "(best)" in titles[2] and all("(no words)" in t and "(best)" not in t for t in titles[:2])
    frames = [any(patch.get_gid() == "flag" for patch in ax.patches) for ax in map_panels(explorer.figure)]
    assert frames[:2] == [True, True]
    assert "2 prompts have no words" in explorer.status.value
    explorer.prompts.value = "!!!; ?"
    assert not any("(best)" in ax.title.get_text() for ax in map_panels(explorer.figure))
    assert "<b>" not in explorer.scores.value.split("</tr>", 1)[1]  # no score in bold


def test_a_prompt_cut_at_the_context_length_says_which_words_were_ignored(tiny, scenes):
    length = tiny.context_length
    words = [f"{c} {s}" for c in ("red", "blue", "green") for s in ("circle", "square", "star")]
    long = " and ".join(words * (length // 4))
    with pytest.warns(UserWarning, match="cut to the context length"):
        result = explain_text(tiny, scenes[0].image, [long, "a red circle"], layers=3)
    cut = result.truncated[0]
    assert cut and result.truncated[1] == []
    assert result.words[0] + cut == long.split()  # the explained words, then the ignored ones
    assert result.pair(0, 0).truncated == cut
    assert "cut at the context length" in result.plot_bar(0, 0).axes[0].get_title()
    assert "cut at the context length" in result.plot_text(0, 0).axes[0].get_title(loc="left")
    assert "cut at the context length" not in result.plot_bar(0, 1).axes[0].get_title()
    with pytest.warns(UserWarning, match="cut to the context length"):
        explorer = Explorer(tiny, scenes, [long, "a red circle"])
    assert explorer.last["truncated"] == {long: cut}
    assert "cut at the context length: ignored \u201c" + " ".join(cut[:8]) in explorer.status.value
    assert "line-through'>" + " ".join(cut) in explorer.words.value


def test_another_image_offers_its_own_prompts(tiny, scenes):
    from gradeclip_utils.samples import image_prompts, object_prompts
    from gradeclip_utils.widgets.explorer import OBJECT_PROMPTS

    explorer = Explorer(tiny, scenes, ["a red circle"], suggestions=["a star"])
    values = [option[1] if isinstance(option, tuple) else option for option in explorer.suggestions.options]
    assert values[:2] == ["(add a prompt)", OBJECT_PROMPTS] and values[-1] == "a star"
    assert values[2:-1] == image_prompts(scenes[0]) and "a blue square" in values
    explorer.image.value = "scene 6"
    assert len(explorer.history) == 2 and explorer.last["prompts"] == ["a red circle"]  # kept until asked
    labels = [option[0] for option in explorer.suggestions.options if isinstance(option, tuple)]
    assert [label.split(" \u00b7 ")[0] for label in labels] == image_prompts(scenes[1])
    explorer.suggestions.value = OBJECT_PROMPTS
    assert explorer.last["prompts"] == object_prompts(scenes[1]) and len(explorer.history) == 3
    assert explorer.suggestions.value == "(add a prompt)"
    comparison = MethodComparison(tiny, scenes, ["a yellow star"], methods=["grad_eclip"])
    assert list(comparison.prompt.options) == [*image_prompts(scenes[0]), "a yellow star"]
    comparison.image.value = "scene 6"
    assert list(comparison.prompt.options)[:2] == image_prompts(scenes[1])[:2] and len(comparison.history) == 2


def test_the_export_button_writes_the_figure_and_its_manifest(explorer, tmp_path):
    explorer.export_folder.value = str(tmp_path / "chosen")
    explorer.layer.value = 1
    explorer.export_button.click()
    written = sorted(p.name for p in (tmp_path / "chosen").iterdir())
    assert len(written) == 3 and {p.rsplit(".", 1)[1] for p in written} == {"png", "pdf", "json"}
    name = written[0].rsplit(".", 1)[0]
    assert name.startswith("explorer_") and f"{name}.png" in explorer.exported.value
    saved = json.loads((tmp_path / "chosen" / f"{name}.json").read_text())
    assert saved["settings"]["layers"] == [1] and saved["prompts"] == ["a red circle", "a blue square"]
    assert saved["title"] == explorer.figure.get_suptitle()
    assert png_size((tmp_path / "chosen" / f"{name}.png").read_bytes())[0] > 100
    explorer.export_button.click()  # within the same second: a second name, nothing overwritten
    assert len(list((tmp_path / "chosen").iterdir())) == 6
    explorer.prompts.value = ""
    assert explorer.export_to_folder(tmp_path / "chosen") is None and "last render failed" in explorer.exported.value


def test_a_saved_explorer_shows_a_static_snapshot_without_a_kernel(explorer):
    bundle = explorer.widget._repr_mimebundle_()
    page = bundle["text/html"]
    assert "static snapshot" in page and "run the cell to use the controls" in page
    assert "data:image/png;base64," in page and "grad_eclip \u00b7 block 2" in page
    style = explorer.style.value  # ipywidgets marks every view of a saved state without a kernel "disconnected"
    assert ".gradeclip-panel.jupyter-widgets-disconnected .gradeclip-controls { display: none; }" in style
    assert "gradeclip-snapshot-note" in explorer.widget.children[1]._dom_classes
    assert all("gradeclip-controls" in child._dom_classes for child in (explorer.widget.children[2],
                                                                        explorer.widget.children[-1]))
    assert explorer.view.layout.max_width == "100%" and explorer.view.layout.height == "auto"


def test_the_score_switch_explains_the_chosen_score(tiny, scenes, explorer):
    """The explorer's score switch: each score's maps and scores equal explain_image's with that score (the
    probability's scores sum to 1), the contrast takes prompts written "a | b", a method that ignores the
    score disables the switch and runs the cosine, the words follow the text method's own scores."""
    prompts = ["a red circle", "a blue square"]
    explorer.score.value = "probability"
    want = direct(tiny, scenes[0], prompts, score="probability")
    assert explorer.explanation.settings["score"] == "probability"
    assert torch.allclose(explorer.explanation.maps, want.maps, atol=1e-6)
    assert torch.allclose(explorer.explanation.scores, want.scores, atol=1e-6)
    assert abs(float(explorer.explanation.scores.sum()) - 1) < 1e-5
    assert "score probability" in explorer.status.value and "p (probability)" in explorer.scores.value
    assert all("\np = " in ax.get_title() for ax in map_panels(explorer.figure)[1:] if ax.get_title())
    explorer.prompts.value = "a red circle | a blue square"
    explorer.score.value = "contrast"
    want = direct(tiny, scenes[0], [("a red circle", "a blue square")], score="contrast")
    assert explorer.explanation.prompts == ["a red circle rather than a blue square"]
    assert torch.allclose(explorer.explanation.maps, want.maps, atol=1e-6)
    assert explorer.text_explanation.texts == prompts  # the words of both captions, by their cosines
    explorer.prompts.value = "a red circle"
    assert "could not render" in explorer.status.value and "a red circle | a blue circle" in explorer.status.value
    explorer.prompts.value = "a red circle; a blue square"
    explorer.score.value = "logit"
    explorer.method.value = "rollout"
    assert explorer.score.disabled and not explorer.last["uses_score"]
    assert explorer.explanation.settings.get("score", "cosine") == "cosine"
    assert "score: not used" in explorer.status.value
    explorer.method.value = "grad_eclip"
    assert not explorer.score.disabled
    logit = direct(tiny, scenes[0], prompts, score="logit")
    cosine = direct(tiny, scenes[0], prompts)
    assert torch.allclose(explorer.explanation.maps, logit.maps, atol=1e-6)
    scale = float(tiny.adapter.logit_scale)
    assert torch.allclose(logit.maps, scale * cosine.maps, rtol=1e-4, atol=1e-6)
