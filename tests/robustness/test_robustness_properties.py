"""Property-based checks over image sizes, modes, layouts and prompt strings: maps are finite, in
[0, 1] once normalised, and on the grid the sizes imply."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import gradeclip_utils as ge

PATCH = 8  # the tiny test model's patch size
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
MODES = ["RGB", "L", "1", "RGBA", "LA", "P", "CMYK", "YCbCr", "I;16", "F"]


def picture(width, height, mode, seed):
    array = np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(array[..., 0].astype(np.float32) / 3.0)
    image = Image.fromarray(array) if mode in ("RGBA", "LA") else Image.fromarray(array[..., :3])
    return image.convert(mode)


def expected_grid(width, height, resolution):
    """By hand: each side to the nearest whole number of patches, halves up, at least one."""
    if resolution == "model":
        return 6, 6
    return max(1, math.floor(height / PATCH + 0.5)), max(1, math.floor(width / PATCH + 0.5))


def check(explanation, grid, count):
    assert explanation.raw[0].shape == (count, *grid)
    assert torch.isfinite(explanation.raw[0]).all() and (explanation.raw[0] >= 0).all()
    assert torch.isfinite(explanation.scores).all()
    heat = explanation.heatmaps()
    assert heat.shape == (1, count, grid[0] * PATCH, grid[1] * PATCH)
    assert torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    one = explanation.heatmap(0, count - 1)
    assert one.shape == heat.shape[-2:] and np.isfinite(one).all() and one.min() >= 0 and one.max() <= 1


@PROPERTY
@given(width=st.integers(1, 160), height=st.integers(1, 160), mode=st.sampled_from(MODES),
       resolution=st.sampled_from(["native", "model"]), seed=st.integers(0, 2**16),
       prompt=st.text(max_size=40))
def test_maps_are_finite_in_range_and_on_the_implied_grid(tiny, width, height, mode, resolution, seed, prompt):
    image = picture(width, height, mode, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # long prompts are cut, with a warning
        explanation = ge.explain_image(tiny, image, [prompt, "a photo"], resolution=resolution)
    check(explanation, expected_grid(width, height, resolution), 2)


@st.composite
def picture_arrays(draw):
    """Picture arrays in every accepted layout and dtype, with their (width, height)."""
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32", "float64", "bool", "int64"]))
    if dtype in ("float32", "float64"):
        array = rng.random(shape).astype(dtype)
    elif dtype == "bool":
        array = rng.random(shape) > 0.5
    else:
        array = rng.integers(0, 65536 if dtype == "uint16" else 256, size=shape).astype(dtype)
    layout = draw(st.sampled_from(["numpy-hwc", "numpy-chw", "tensor-chw", "tensor-hwc"]))
    if channels is not None and layout.endswith("chw"):
        array = np.ascontiguousarray(np.moveaxis(array, -1, 0))
    if layout.startswith("tensor"):
        if dtype in ("float32", "float64", "uint16"):  # float tensors are preprocessed pixels, not pictures
            array = array.astype(np.uint8) if dtype == "uint16" else (array * 255).round().astype(np.uint8)
        array = torch.from_numpy(array)
    return array, width, height


def ambiguous(array, width, height):
    """Shapes whose first and last axes both look like channels: the layout rule decides, not the test."""
    shape = tuple(array.shape)
    return len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] in (1, 3, 4)


@PROPERTY
@given(item=picture_arrays(), resolution=st.sampled_from(["native", "model"]))
def test_picture_arrays_give_finite_maps_on_the_implied_grid(tiny, item, resolution):
    array, width, height = item
    explanation = ge.explain_image(tiny, array, ["a red circle"], resolution=resolution)
    if ambiguous(array, width, height):
        assert explanation.raw[0].shape[0] == 1 and torch.isfinite(explanation.raw[0]).all()
        grid = tuple(explanation.raw[0].shape[-2:])
    else:
        grid = expected_grid(width, height, resolution)
    check(explanation, grid, 1)


@PROPERTY
@given(texts=st.lists(st.text(max_size=50), min_size=1, max_size=3))
def test_word_importance_is_a_distribution_over_the_words(tiny, texts):
    pixels = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        explanation = ge.explain_text(tiny, pixels, texts)
    assert explanation.word_importance.shape[:2] == (1, len(texts))
    for values in (explanation.token_importance, explanation.word_importance):
        assert torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 + 1e-6
    for k in range(len(texts)):
        pair = explanation.pair(0, k)
        assert len(pair.words) <= len(pair.tokens) <= tiny.context_length - 2
        assert "".join(p.replace("</w>", "") for p in pair.tokens) == "".join(pair.words)
        total = float(pair.word_importance.sum())
        assert abs(total - float(pair.token_importance.sum())) <= 1e-5
        assert abs(total - 1) <= 1e-5 or total == 0
        assert total == 0 or len(pair.words) > 0
