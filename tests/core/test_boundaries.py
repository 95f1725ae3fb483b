"""Boundary cases and invariances, by kind: every value of an enum the code branches on (the eight EXIF
orientations), sizes where a rounding rule changes the count (native-resolution patch rounding just below,
at and above half a patch; the authors' int(H W / 200) pixels per step), extrema that are not in a grid's
corners (the pointing game and resizing keep an interior maximum where it is), invariances where a feature
is normalised (prompt embeddings scaled by a constant) or two equal things are passed (the same picture
twice in a batch), and the explorers' cache and the figure manifests as their users see them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils.inputs import load_image, native_size
from gradeclip_utils.maps import resize_maps
from gradeclip_utils.metrics.faithfulness import authors_perturbation_curves
from gradeclip_utils.metrics.localisation import pointing_game

# ---------------------------------------------------------------------------------- EXIF orientations
#: what a viewer does to the stored pixels for each EXIF orientation (TIFF 6.0; PIL's exif_transpose)
SHOWN = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
#: the inverse of each (to store a picture so that it shows upright)
STORED = {**SHOWN, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_every_exif_orientation_gives_the_upright_picture(tmp_path, orientation, suffix):
    rng = np.random.default_rng(orientation)
    upright = np.zeros((12, 20, 3), np.uint8)  # not square and not symmetric: every transform differs
    upright[:4, :6] = (250, 10, 10)
    upright[8:, 15:] = (10, 10, 250)
    upright[5:7] = rng.integers(0, 255, (2, 20, 3))
    picture = Image.fromarray(upright)
    stored = picture if STORED[orientation] is None else picture.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{suffix}"
    stored.save(path, exif=exif, **({"quality": 100, "subsampling": 0} if suffix == "jpg" else {}))
    loaded = np.asarray(load_image(path).convert("RGB"))
    assert loaded.shape == upright.shape
    tolerance = 0 if suffix == "png" else 24  # JPEG is lossy; a wrong transform moves blocks of 240
    assert np.abs(loaded.astype(int) - upright.astype(int)).max() <= tolerance


# -------------------------------------------------------------------------------- rounding boundaries
def nearest_multiple(size: int, patch: int) -> int:
    """The nearest multiple of the patch, halves up, at least one patch (integer arithmetic)."""
    return max(1, (2 * size + patch) // (2 * patch)) * patch


@pytest.mark.parametrize("k", [1, 2, 7])
@pytest.mark.parametrize("offset", [-9, -8, -7, -1, 0, 1, 7, 8, 9])
def test_native_size_rounds_each_side_to_the_nearest_patch_at_every_boundary(k, offset):
    ph, pw = 8, 16  # unequal, so that a swapped height and width shows
    width, height = 16 * k + offset, 8 * k + offset // 2
    if width < 1 or height < 1:
        return
    got_w, got_h, capped = native_size(width, height, (ph, pw), max_patches=10_000)
    assert (got_w, got_h, capped) == (nearest_multiple(width, pw), nearest_multiple(height, ph), False)


@pytest.mark.parametrize("grid", [(4, 5), (1, 9), (9, 1)])
def test_native_size_caps_at_the_patch_count_exactly(grid):
    gw, gh = grid
    count = gw * gh
    assert native_size(gw * 16, gh * 16, (16, 16), max_patches=count) == (gw * 16, gh * 16, False)
    w, h, capped = native_size(gw * 16, gh * 16, (16, 16), max_patches=count - 1) if count > 1 else (16, 16, False)
    assert (w // 16) * (h // 16) <= max(1, count - 1) and capped == (count > 1)


@pytest.mark.parametrize("height, width", [(10, 19), (10, 20), (10, 21), (20, 19), (20, 20), (20, 21), (1, 1)])
def test_the_authors_curves_change_int_hw_over_200_pixels_per_step(height, width):
    """int(H W / 200) pixels per step (at least 1), around the sizes where that count changes."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(1, 255, (height, width, 3), dtype=np.uint8))  # no black pixel
    frames = []

    def preprocess(image):
        frames.append(np.asarray(image).copy())
        return torch.zeros(3, 2, 2)

    heat = rng.random((height, width))
    authors_perturbation_curves(lambda x: torch.ones(len(x), 4), preprocess, picture, heat, torch.eye(4)[:2], 0)
    once = max(1, int(height * width / 200))
    insertion = frames[2:21:2]  # the picture, then deletion and insertion alternately at steps 10, ..., 100
    for n, frame in enumerate(insertion, start=1):
        assert int((frame.sum(axis=-1) > 0).sum()) == min(height * width, 10 * n * once)


# ------------------------------------------------------------------------------- interior extrema
@settings(max_examples=60, deadline=None)
@given(st.integers(3, 9), st.integers(3, 9), st.data(), st.integers(1, 5))
def test_an_interior_maximum_stays_in_its_cell_when_resized_and_is_pointed_at(h, w, data, scale):
    r = data.draw(st.integers(1, h - 2))  # not on the border: a corner keeps its value whatever the resize
    c = data.draw(st.integers(1, w - 2))
    grid = torch.rand(h, w, generator=torch.Generator().manual_seed(h * 31 + w)) * 0.5
    grid[r, c] = 1.0
    big = resize_maps(grid, (h * scale, w * scale), dtype=torch.float64)
    y, x = divmod(int(big.argmax()), w * scale)
    assert (y // scale, x // scale) == (r, c)
    hit = torch.zeros(h * scale, w * scale, dtype=torch.bool)
    hit[r * scale:(r + 1) * scale, c * scale:(c + 1) * scale] = True
    assert pointing_game(big[None].numpy(), hit[None].numpy())[0] == 1
    assert pointing_game(big[None].numpy(), (~hit)[None].numpy())[0] == 0


# ------------------------------------------------------------------------------------ invariances
PIXELS = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", ["grad_eclip", "game", "maskclip", "grad_cam", "legrad"])
def test_prompt_embeddings_scaled_by_a_constant_give_the_same_maps_and_scores(tiny, method):
    targets = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    unit = ge.explain_image(tiny, PIXELS, F.normalize(targets, dim=-1), method=method, progress=False)
    for scale in (0.01, 3.7):
        scaled = ge.explain_image(tiny, PIXELS, targets * scale, method=method, progress=False)
        assert torch.allclose(scaled.maps, unit.maps, atol=1e-6, rtol=1e-5), scale
        assert torch.allclose(scaled.scores, unit.scores, atol=1e-6)


@pytest.mark.parametrize("method", ["grad_eclip", "rollout", "clip_surgery"])
def test_the_same_picture_twice_in_a_batch_gives_the_same_map_twice(tiny, method):
    other = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(9))
    ex = ge.explain_image(tiny, torch.cat([PIXELS, other, PIXELS]), ["a red circle", "a blue square"],
                          method=method, progress=False)
    assert torch.allclose(ex.raw[0], ex.raw[2], atol=1e-6) and torch.allclose(ex.scores[0], ex.scores[2], atol=1e-6)
    swapped = ge.explain_image(tiny, torch.cat([PIXELS, other, PIXELS]), ["a blue square", "a red circle"],
                               method=method, progress=False)
    assert torch.allclose(swapped.raw[0].flip(0), ex.raw[0], atol=1e-6)  # prompts swapped: maps swapped


# ---------------------------------------------------------------------------- explorers and manifests
def test_the_explorer_cache_keeps_one_map_for_every_value_of_an_unused_setting(tiny, monkeypatch):
    from gradeclip_utils import widgets
    from gradeclip_utils.synthetic import generate_scene

    pytest.importorskip("ipywidgets")
    calls = []
    real = ge.explain_image

    def counting(*args, **kwargs):
        calls.append((kwargs.get("method"), kwargs.get("layers"), kwargs.get("mode")))
        return real(*args, **kwargs)

    monkeypatch.setattr(ge, "explain_image", counting)
    explorer = widgets.Explorer(tiny, [generate_scene(3)], ["a red circle"])
    explorer.method.value = "rollout"
    before = len(calls)
    explorer.layer.value = 0  # rollout takes no block: the cached map is drawn again
    explorer.mode.value = "official"  # nor a mode
    assert len(calls) == before and explorer.error is None
    assert calls[-1] == ("rollout", (-1,), "faithful")
    explorer.method.value = "grad_eclip"  # Grad-ECLIP takes both: block 0, official mode, a new map
    assert calls[-1] == ("grad_eclip", (0,), "official") and len(calls) == before + 1
    assert explorer.explanation.settings["layers"] == [0] and explorer.explanation.settings["mode"] == "official"


def test_a_manifest_records_the_explanations_settings_and_lets_explicit_ones_win(tiny, tmp_path):
    from matplotlib import pyplot as plt

    from gradeclip_utils.export import FigureExporter

    other = ge.explain_image(tiny, PIXELS, ["a red circle"], layers=(1,), mode="official", progress=False)
    exporter = FigureExporter(tmp_path, model=tiny)
    described = dict(other.settings)
    fig = plt.figure()
    try:
        # the explanation's own model fields win over the exporter's model's description
        changed = ge.ImageExplanation(raw=other.raw, scores=other.scores, prompts=other.prompts, images=other.images,
                                      settings={**described, "model": "another-model", "precision": "bf16"})
        manifest = exporter.save(fig, "a", explanation=changed)
        assert manifest["model"] == "another-model" and manifest["precision"] == "bf16"
        assert manifest["settings"]["layers"] == [1] and manifest["settings"]["mode"] == "official"
        # explicit settings win over the explanation's; the method likewise
        manifest = exporter.save(fig, "b", explanation=other, settings={"mode": "faithful"}, method="custom")
        assert manifest["settings"]["mode"] == "faithful" and manifest["settings"]["layers"] == [1]
        assert manifest["method"] == "custom"
        on_disk = json.loads((tmp_path / "b.json").read_text())
        assert on_disk["settings"]["mode"] == "faithful" and on_disk["model"] == "tiny-test-clip"
        # a method that does not use layers: the manifest records no layers
        rollout = ge.explain_image(tiny, PIXELS, ["a red circle"], method="rollout", progress=False)
        assert "layers" not in exporter.save(fig, "c", explanation=rollout)["settings"]
    finally:
        plt.close(fig)


# --------------------------------------------------------------- the explained class is not the scored one
def test_the_authors_curves_score_the_label_while_the_map_explains_the_target(tiny):
    """ImageNet's --target pred: the map explains the prediction (``target``), the curves score the
    ground truth (``label``); the tests' other items have the two equal, where swapping them changes nothing."""
    from gradeclip_utils import evaluation as ev

    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    classifier = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(8)), dim=-1)
    item = ev.EvalItem(key="k", label=0, load=lambda: (None, None), target=2)
    row: dict = {}
    ev.authors_faithfulness(tiny, "grad_eclip", item, picture, classifier, row, {}, seed=0, logit_scale=100.0,
                            steps=11)
    explained = ev.EvalItem(key="k", label=2, load=lambda: (None, None))
    heat = ev.authors_maps(tiny, "grad_eclip", item, picture, classifier, {})
    assert np.array_equal(heat, ev.authors_maps(tiny, "grad_eclip", explained, picture, classifier, {}))
    assert not np.allclose(heat, ev.authors_maps(tiny, "grad_eclip", ev.EvalItem(key="k", label=0, load=item.load),
                                                  picture, classifier, {}))
    with torch.no_grad():
        whole = F.normalize(tiny.adapter.encode_image(tiny.preprocess(picture).float()[None]).float(), dim=-1)[0]
    assert row["deletion_score_00"] == pytest.approx(float(whole @ classifier[0]), abs=1e-5)
    assert abs(float(whole @ classifier[0]) - float(whole @ classifier[2])) > 1e-3  # the two classes differ


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_precision_on_the_cpu_is_explained_or_refused_by_name(precision):
    """Every value of the precision choice (loading.PRECISION_DTYPES) on the CPU: fp32 is the reference; bf16
    gives Grad-ECLIP maps that rank the patches as fp32 does (Spearman >= 0.99) within 5% of the fp32 map's
    maximum; fp16, which this torch build lacks CPU kernels for, is refused by name before any work."""
    from scipy.stats import spearmanr

    from gradeclip_utils.loading import PRECISION_DTYPES

    assert set(PRECISION_DTYPES) == {"fp32", "fp16", "bf16"}  # a new value needs a case here
    prompts = ["a red circle", "a blue square"]
    if precision == "fp16":
        with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
            ge.load_model("synthetic", device="cpu", precision="fp16")
        return
    reference = ge.explain_image(ge.load_model("synthetic", device="cpu"), "data/samples/three_shapes.png", prompts)
    model = ge.load_model("synthetic", device="cpu", precision=precision)
    assert model.adapter.dtype == PRECISION_DTYPES[precision]
    ex = ge.explain_image(model, "data/samples/three_shapes.png", prompts)
    assert ex.maps.dtype == torch.float32 and ex.maps.shape == reference.maps.shape
    for k in range(len(prompts)):
        want, got = reference.maps[0, k].flatten(), ex.maps[0, k].flatten()
        assert (got - want).abs().max() <= 0.05 * want.abs().max()
        assert spearmanr(got.numpy(), want.numpy())[0] >= 0.99
