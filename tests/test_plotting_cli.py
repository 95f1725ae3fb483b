"""Figures and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils import cli
from gradeclip_utils.plotting import overlay, save_figure


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 64, 3)) * 255).astype(np.uint8))


def test_grid_has_one_panel_per_image_and_prompt_with_scores(tiny, picture):
    explanation = ge.explain_image(tiny, [picture, picture.transpose(Image.FLIP_LEFT_RIGHT)], ["a cat", "a dog"])
    fig = explanation.plot()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 3  # input + two prompts, two rows
    titles = [ax.get_title() for ax in fig.axes]
    for b in range(2):
        for k, prompt in enumerate(["a cat", "a dog"]):
            assert any(title.startswith(prompt) and f"{float(explanation.scores[b, k]):.3f}" in title
                       for title in titles)
    plt.close(fig)


def test_overlay_draws_the_heatmap_over_the_picture(picture):
    heat = np.zeros((5, 8), dtype=np.float32)
    heat[2, 3] = 1.0
    fig = overlay(picture, heat)
    base, top = fig.axes[0].images
    assert np.asarray(base.get_array()).shape[:2] == (40, 64)
    shown = np.asarray(top.get_array())
    assert shown.shape == (40, 64)
    assert np.unravel_index(shown.argmax(), shown.shape)[1] // 8 == 3  # the hot patch column
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        overlay(picture, np.zeros((2, 2, 2)))


def test_word_figures_show_every_word(tiny, picture):
    words = ge.explain_text(tiny, picture, ["a small red circle"])
    bars = words.plot_bar()
    labels = [t.get_text() for t in bars.axes[0].get_xticklabels()]
    assert labels == ["a", "small", "red", "circle"]
    heights = [p.get_height() for p in bars.axes[0].patches]
    assert np.allclose(heights, words.pair().word_importance)
    text = words.plot_text()
    assert [t.get_text() for t in text.axes[0].texts] == ["a", "small", "red", "circle"]
    plt.close("all")


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_save_figure_writes_each_format(tmp_path, fmt):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    written = save_figure(fig, tmp_path / f"figure.{fmt}")
    assert written == [tmp_path / f"figure.{fmt}"] and written[0].stat().st_size > 100
    magic = written[0].read_bytes()[:5]
    assert {"png": b"\x89PNG\r", "pdf": b"%PDF-", "svg": b"<?xml"}[fmt] == magic
    both = save_figure(fig, tmp_path / "sub" / "figure", formats=("png", "pdf"))
    assert [p.suffix for p in both] == [".png", ".pdf"] and all(p.exists() for p in both)
    with pytest.raises(ValueError, match="format"):
        save_figure(fig, tmp_path / "figure.jpg")
    plt.close(fig)


def test_explanation_save_and_load_round_trip(tiny, picture, tmp_path):
    explanation = ge.explain_image(tiny, picture, ["a cat", "a dog"])
    path = explanation.save(tmp_path / "ex")
    loaded = ge.ImageExplanation.load(path)
    assert torch.equal(loaded.maps, explanation.maps)
    assert torch.equal(loaded.scores, explanation.scores)
    assert loaded.prompts == explanation.prompts and loaded.settings == explanation.settings


def test_cli_reports_missing_weights_clearly(tmp_path, capsys, picture):
    image = tmp_path / "picture.png"
    picture.save(image)
    code = cli.main(["explain", str(image), "a dog", "--model", "ViT-B-16", "--pretrained", "openai",
                     "--device", "cpu", "--out", str(tmp_path / "fig.png")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pretrained weights 'openai'" in err and "local path" in err


def test_cli_reports_a_missing_image(tmp_path, capsys):
    code = cli.main(["explain", str(tmp_path / "missing.png"), "a dog", "--model", "ViT-B-16", "--device", "cpu"])
    assert code == 2
    assert "missing.png" in capsys.readouterr().err


def test_cli_lists_methods(capsys):
    assert cli.main(["methods"]) == 0
    assert "grad_eclip" in capsys.readouterr().out


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return renderer, [fig._suptitle.get_window_extent(renderer)] + [ax.title.get_window_extent(renderer)
                                                                    for ax in fig.axes if ax.images]


def test_grid_says_its_scaling_and_its_titles_do_not_collide(tiny, picture):
    """ex.plot(): a colour bar that says each panel is min-max scaled on its own, a suptitle clear of the panel
    titles and panels, a negative S flagged in red as the explorers flag it."""
    from matplotlib.colors import to_hex

    from gradeclip_utils.plotting import NEGATIVE_COLOUR, SCALE_LABELS

    explanation = ge.explain_image(tiny, [picture, picture], ["a cat with a rather long description", "a dog"])
    fig = explanation.plot()
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(bars) == 1 and bars[0].get_ylabel() == SCALE_LABELS["panel"]
    assert "grad_eclip" in fig.get_suptitle() and "model tiny-test-clip" in fig.get_suptitle()
    renderer, boxes = _boxes(fig)
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1:] + panels)
    for ax in fig.axes:
        if len(ax.images) == 2:
            shown = np.asarray(ax.images[1].get_array())
            assert shown.min() == pytest.approx(0.0, abs=1e-6) and shown.max() == pytest.approx(1.0, abs=1e-6)
    flagged = [to_hex(ax.title.get_color()) == NEGATIVE_COLOUR for ax in fig.axes if len(ax.images) == 2]
    assert flagged == [float(s) < 0 for s in explanation.scores.flatten()]
    plt.close(fig)


@pytest.mark.parametrize("text, width, lines", [
    ("maskclip (no block) (no mode)", 27, ["maskclip (no block)", "(no mode)"]),
    ("scene 2024 · synthetic: open_clip ViT, synthetic (top 2 randomised): open_clip ViT · one colour scale",
     68, ["scene 2024", "synthetic: open_clip ViT, synthetic (top 2 randomised):", "open_clip ViT",
          "one colour scale"]),
    ("grad_eclip · block 3 · faithful mode · model synthetic", 40, ["grad_eclip · block 3 · faithful mode",
                                                                    "model synthetic"]),
    ("one two three four five", 9, ["one two", "three", "four five"]),
])
def test_titles_break_at_their_separators(text, width, lines):
    from gradeclip_utils.plotting import _wrapped

    assert _wrapped(text, width).split("\n") == lines


def test_times_keep_three_digits():
    from gradeclip_utils.plotting import format_seconds

    assert [format_seconds(s) for s in (0.00842, 0.0123, 0.153, 2.314, 0.0004)] == [
        "8.42 ms", "12.3 ms", "153 ms", "2.31 s", "0.40 ms"]


def test_each_method_has_one_distinct_colour():
    from matplotlib.colors import to_hex

    from gradeclip_utils.methods import list_methods, method_specs
    from gradeclip_utils.methods.registry import REFERENCE_COLOUR, MethodSpec, method_colour
    from gradeclip_utils.studies.methods import method_palette

    names = [spec.name for spec in method_specs()]
    colours = [to_hex(method_colour(name)) for name in names]
    assert colours[0] == "#000000" and names[0] == "grad_eclip"
    assert len(set(colours)) == len(colours) and REFERENCE_COLOUR not in colours  # distinct, none grey
    assert method_colour("random") == REFERENCE_COLOUR  # the evaluation's floor: not registered
    reference = MethodSpec(name="floor", image=lambda *a, **k: None, reference=True)
    assert method_colour(reference) == REFERENCE_COLOUR
    assert method_colour(MethodSpec(name="own", image=lambda *a, **k: None, colour="#123456")) == "#123456"
    assert method_palette(list_methods()["image"]) == {m: method_colour(m) for m in list_methods()["image"]}
