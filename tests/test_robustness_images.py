"""Robustness of image inputs: PIL modes, EXIF, extreme sizes, broken files, arrays and tensors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils.inputs import array_to_picture, load_image, native_size, prepare_images, to_rgb

PROMPTS = ["a red circle", "a photo"]


def rgb_array(height=40, width=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def check_maps(explanation, grids, count=len(PROMPTS)):
    """Raw maps finite and non-negative on the expected grids; heat maps in [0, 1]."""
    assert explanation.grid_sizes == grids
    for index, raw in enumerate(explanation.raw):
        assert raw.shape == (count, *grids[index])
        assert torch.isfinite(raw).all() and (raw >= 0).all()
        heat = explanation[index].heatmaps()
        assert torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


def same_maps(tiny, a, b, resolution="native"):
    x = ge.explain_image(tiny, a, PROMPTS, resolution=resolution)
    y = ge.explain_image(tiny, b, PROMPTS, resolution=resolution)
    assert x.grid_sizes == y.grid_sizes
    for u, v in zip(x.raw, y.raw):
        assert torch.equal(u, v)
    return x


# ---------------------------------------------------------------------------------------- PIL modes
def rgba_picture():
    array = np.dstack([rgb_array(), np.linspace(0, 255, 56 * 40).reshape(40, 56).astype(np.uint8)])
    return Image.fromarray(array)  # RGBA


def p_transparent():
    picture = Image.fromarray(rgb_array()).convert("P")
    picture.info["transparency"] = int(np.asarray(picture)[0, 0])  # one palette entry is transparent
    return picture


MODE_PICTURES = {
    "L": lambda: Image.fromarray(rgb_array()[..., 0]),
    "1": lambda: Image.fromarray(rgb_array()[..., 0] > 127),
    "RGBA": rgba_picture,
    "LA": lambda: rgba_picture().convert("LA"),
    "P": lambda: Image.fromarray(rgb_array()).convert("P"),
    "P-transparent": p_transparent,
    "CMYK": lambda: Image.fromarray(rgb_array()).convert("CMYK"),
    "LAB": lambda: Image.new("LAB", (56, 40), (135, 208, 195)),
    "La": lambda: rgba_picture().convert("RGBa").convert("RGBA").convert("LA").convert("La"),
    "YCbCr": lambda: Image.fromarray(rgb_array()).convert("YCbCr"),
    "I;16": lambda: Image.fromarray((rgb_array()[..., 0].astype(np.uint16) * 257)),
    "I": lambda: Image.fromarray(rgb_array()[..., 0].astype(np.int32) * 1000),
    "F": lambda: Image.fromarray(rgb_array()[..., 0].astype(np.float32) / 7.0),
}


@pytest.mark.parametrize("mode", sorted(MODE_PICTURES))
def test_every_pil_mode_gives_finite_maps(tiny, mode):
    picture = MODE_PICTURES[mode]()
    assert picture.mode == mode.split("-")[0]
    rgb = to_rgb(picture)
    assert rgb.mode == "RGB" and rgb.size == picture.size
    for resolution, grid in (("native", (5, 7)), ("model", (6, 6))):
        check_maps(ge.explain_image(tiny, picture, PROMPTS, resolution=resolution), [grid])


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(to_rgb(rgba)).min() == 255
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 127) <= 1
    la = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(to_rgb(la)).min() == 255
    assert np.abs(np.asarray(to_rgb(Image.new("LAB", (2, 2), (0, 128, 128))), dtype=int)).max() <= 2  # black
    assert np.asarray(to_rgb(Image.new("LAB", (2, 2), (255, 128, 128)))).min() >= 253  # white
    palette = p_transparent()
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_images_use_their_full_range():
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    assert np.asarray(to_rgb(Image.fromarray(levels)))[0, :, 0].tolist() == [0, 1, 128, 255]
    path_picture = Image.fromarray(levels)
    buffer = io.BytesIO()
    path_picture.save(buffer, format="PNG")
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    assert reopened.mode.startswith("I")
    assert np.asarray(to_rgb(reopened))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_rotation_is_applied_to_files_and_to_opened_images(tiny, tmp_path):
    array = rgb_array(40, 56)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (40, 56)  # width and height swapped, as viewers show it
    from_path = ge.explain_image(tiny, path, PROMPTS)
    assert from_path.grid_sizes == [(7, 5)]
    with Image.open(path) as opened:
        assert opened.size == (56, 40)
        from_opened = ge.explain_image(tiny, opened, PROMPTS)
    assert torch.equal(from_path.raw[0], from_opened.raw[0])
    # the transposed picture is the stored one rotated 90 degrees clockwise
    stored = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(loaded, dtype=np.int16) - np.rot90(stored, k=-1)).max() == 0


# --------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("size", [(1, 1), (8, 8), (3, 17)])
def test_tiny_images_become_at_least_one_patch(tiny, size):
    picture = Image.fromarray(rgb_array(size[1], size[0], seed=3))
    native = ge.explain_image(tiny, picture, PROMPTS, resolution="native")
    expected = (max(1, round(size[1] / 8 + 1e-9)), max(1, round(size[0] / 8 + 1e-9)))
    check_maps(native, [expected])
    assert native.images[0].size == (expected[1] * 8, expected[0] * 8)
    check_maps(ge.explain_image(tiny, picture, PROMPTS, resolution="model"), [(6, 6)])


def test_native_size_never_exceeds_the_patch_budget():
    # by hand: 10000 x 200 at patch 16 is a 625 x 13 grid = 8125 patches
    assert native_size(10000, 200, (16, 16), 1600) == (277 * 16, 5 * 16, True)
    assert native_size(640, 640, (16, 16), 1600) == (640, 640, False)
    assert native_size(1, 1, (16, 16), 1600) == (16, 16, False)
    for width, height in [(100000, 10), (10, 100000), (8000, 8000), (5000, 17), (123457, 1)]:
        for budget in (1, 2, 7, 1600):
            w, h, capped = native_size(width, height, (16, 16), budget)
            assert w % 16 == 0 and h % 16 == 0 and w >= 16 and h >= 16
            assert (w // 16) * (h // 16) <= budget
    with pytest.raises(ValueError, match="max_patches"):
        native_size(10, 10, (16, 16), 0)


def test_panorama_is_capped_with_a_warning(tiny):
    picture = Image.fromarray(np.tile(rgb_array(200, 100, seed=4), (1, 100, 1)))  # 10000 x 200
    assert picture.size == (10000, 200)
    with pytest.warns(UserWarning, match="downscaled") as record:
        explanation = ge.explain_image(tiny, picture, PROMPTS, max_patches=200)
    assert record[0].filename == __file__  # the warning points at the caller's line
    w, h, _ = native_size(10000, 200, (8, 8), 200)
    check_maps(explanation, [(h // 8, w // 8)])
    assert (w // 8) * (h // 8) <= 200 and w > 10 * h
    check_maps(ge.explain_image(tiny, picture, PROMPTS, resolution="model"), [(6, 6)])


def test_huge_image_is_downscaled_at_native_resolution(tiny):
    picture = Image.new("RGB", (8000, 8000), (40, 120, 200))
    picture.paste((250, 10, 10), (1000, 1000, 3000, 5000))
    with pytest.warns(UserWarning, match=r"8000x8000.*more than 1600 patches.*downscaled to 320x320"):
        explanation = ge.explain_image(tiny, picture, PROMPTS)
    check_maps(explanation, [(40, 40)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's own preprocessing needs no cap
        check_maps(ge.explain_image(tiny, picture, PROMPTS, resolution="model"), [(6, 6)])


def test_large_files_give_only_the_package_s_warning_and_absurd_ones_a_clear_error(tiny, tmp_path, monkeypatch):
    """PIL warns of a "decompression bomb DOS attack" from 89 megapixels and refuses from 179: the package opens
    files up to MAX_PICTURE_PIXELS without PIL's warning (it downscales them, with its own) and refuses larger
    ones naming the limit. Scaled down here: PIL's limit 1000 pixels, the package's 200,000."""
    from gradeclip_utils import inputs

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(inputs, "MAX_PICTURE_PIXELS", 200_000)
    large, absurd = tmp_path / "large.png", tmp_path / "absurd.png"
    Image.fromarray(rgb_array(300, 400)).save(large)  # 120,000 pixels
    Image.fromarray(rgb_array(500, 500)).save(absurd)  # 250,000 pixels
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        check_maps(ge.explain_image(tiny, str(large), PROMPTS, max_patches=100), [(8, 11)])
    assert [str(w.message) for w in record if "patches" in str(w.message)]
    assert not [w for w in record if issubclass(w.category, Image.DecompressionBombWarning)], record
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's limit is the user's again
    with pytest.raises(ValueError, match=r"absurd\.png: it has more than 0.2 million pixels \(250,000 pixels\), "
                                         "more than this package opens"):
        load_image(absurd)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a user who trusts every file
    assert load_image(absurd).size == (500, 500)


# ----------------------------------------------------------------------------------- broken files
def png_bytes(size=(56, 40)):
    buffer = io.BytesIO()
    Image.fromarray(rgb_array(size[1], size[0])).save(buffer, format="PNG")
    return buffer.getvalue()


def test_missing_truncated_and_corrupt_files_name_the_file(tiny, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ge.explain_image(tiny, missing, PROMPTS)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        ge.explain_image(tiny, truncated, PROMPTS)
    jpeg = io.BytesIO()
    Image.fromarray(rgb_array()).save(jpeg, format="JPEG")
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg"):
        ge.explain_image(tiny, cut_jpeg, PROMPTS)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"garbage\.png.*not an image"):
        ge.explain_image(tiny, [png_path(tmp_path), garbage], PROMPTS)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg"):
        ge.explain_image(tiny, str(empty), PROMPTS)
    with pytest.raises(ValueError, match="not a file"):
        ge.explain_image(tiny, tmp_path, PROMPTS)


def png_path(folder):
    path = folder / "good.png"
    path.write_bytes(png_bytes())
    return path


def test_lazily_opened_truncated_image_names_the_file(tiny, tmp_path):
    truncated = tmp_path / "lazy.png"
    truncated.write_bytes(png_bytes((300, 300))[:2000])
    with Image.open(truncated) as lazy:  # opening reads the header only
        with pytest.raises(ValueError, match=r"lazy\.png"):
            ge.explain_image(tiny, lazy, PROMPTS)


def test_empty_or_wrong_inputs_give_clear_errors(tiny):
    with pytest.raises(ValueError, match="no images"):
        ge.explain_image(tiny, [], PROMPTS)
    with pytest.raises(TypeError, match="item 0 is int"):
        ge.explain_image(tiny, [3], PROMPTS)
    with pytest.raises(TypeError, match="NoneType"):
        ge.explain_image(tiny, None, PROMPTS)
    with pytest.raises(ValueError, match="resolution"):
        ge.explain_image(tiny, rgb_array(), PROMPTS, resolution="full")
    with pytest.raises(ValueError, match="max_patches"):
        ge.explain_image(tiny, rgb_array(), PROMPTS, max_patches=0)


# ------------------------------------------------------------------------------ arrays and tensors
def test_numpy_and_uint8_tensor_pictures_match_the_pil_image(tiny):
    array = rgb_array()
    picture = Image.fromarray(array)
    same_maps(tiny, picture, array)  # numpy HWC uint8
    same_maps(tiny, picture, np.ascontiguousarray(array.transpose(2, 0, 1)))  # numpy CHW
    same_maps(tiny, picture, array.astype(np.float32) / 255.0)  # float 0-1
    same_maps(tiny, picture, array.astype(np.float64) / 255.0)
    same_maps(tiny, picture, torch.from_numpy(array).permute(2, 0, 1).contiguous())  # torch CHW uint8
    same_maps(tiny, picture, torch.from_numpy(array))  # torch HWC uint8
    same_maps(tiny, picture, array.astype(np.int64))  # plain integers 0-255
    same_maps(tiny, picture, array.astype(np.uint16) * 257)  # 16-bit
    same_maps(tiny, picture, array, resolution="model")
    gray = array[..., 1]
    same_maps(tiny, Image.fromarray(gray), gray)
    same_maps(tiny, Image.fromarray(gray), gray[..., None])
    same_maps(tiny, Image.fromarray(gray), gray[None])
    same_maps(tiny, Image.fromarray(gray > 100), gray > 100)  # bool
    rgba = np.asarray(rgba_picture())
    same_maps(tiny, rgba_picture(), rgba)


def test_batches_of_arrays_and_tensors(tiny):
    arrays = [rgb_array(seed=s) for s in range(3)]
    expected = ge.explain_image(tiny, [Image.fromarray(a) for a in arrays], PROMPTS)
    for batch in (np.stack(arrays), torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
                  [arrays[0], torch.from_numpy(arrays[1]).permute(2, 0, 1), Image.fromarray(arrays[2])]):
        got = ge.explain_image(tiny, batch, PROMPTS)
        assert torch.equal(got.maps, expected.maps)


def test_ambiguous_layouts_follow_each_librarys_convention():
    """(3, W, 3) fits both layouts: numpy reads it channels-last, torch channels-first."""
    array = np.random.default_rng(1).integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    assert array_to_picture(array).size == (5, 3)  # HWC: height 3, width 5
    np.testing.assert_array_equal(np.asarray(array_to_picture(array)), array)
    tensor_picture = array_to_picture(torch.from_numpy(array))
    assert tensor_picture.size == (3, 5)  # CHW: height 5, width 3
    np.testing.assert_array_equal(np.asarray(tensor_picture), array.transpose(1, 2, 0))


def test_bad_arrays_give_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide 0-255 values by 255"):
        ge.explain_image(tiny, rgb_array().astype(np.float32), PROMPTS)
    with pytest.raises(ValueError, match=r"8-bit levels 0-255"):
        ge.explain_image(tiny, rgb_array().astype(np.int32) * 10, PROMPTS)
    with pytest.raises(ValueError, match="NaN"):
        ge.explain_image(tiny, np.full((8, 8, 3), np.nan, dtype=np.float32), PROMPTS)
    with pytest.raises(ValueError, match="empty"):
        ge.explain_image(tiny, np.zeros((0, 8, 3), dtype=np.uint8), PROMPTS)
    with pytest.raises(ValueError, match="no channel axis"):
        ge.explain_image(tiny, np.zeros((8, 8, 5), dtype=np.uint8), PROMPTS)
    with pytest.raises(ValueError, match="shape"):
        ge.explain_image(tiny, np.zeros((2, 2, 8, 8, 3), dtype=np.uint8), PROMPTS)
    with pytest.raises(TypeError, match="dtype"):
        ge.explain_image(tiny, np.zeros((8, 8, 3), dtype=np.complex64), PROMPTS)


def test_float_tensors_are_preprocessed_pixels(tiny):
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    explanation = ge.explain_image(tiny, pixels, PROMPTS)
    assert explanation.maps.shape == (2, 2, 6, 6)
    prepared = prepare_images(tiny, pixels)
    assert all(torch.equal(p.pixels, pixels[i]) for i, p in enumerate(prepared))  # used as is
    single = ge.explain_image(tiny, pixels[0], PROMPTS)
    assert (single.maps[0] - explanation.maps[0]).abs().max() <= 1e-6  # batching changes rounding only
    listed = ge.explain_image(tiny, [pixels[0], pixels[1]], PROMPTS)
    assert torch.equal(listed.maps, explanation.maps)
    # a non-square preprocessed tensor on the patch grid is fine
    assert ge.explain_image(tiny, torch.randn(3, 16, 40), PROMPTS).maps.shape == (1, 2, 2, 5)
    with pytest.raises(ValueError, match=r"preprocessed pixels.*\(3, H, W\).*numpy array"):
        ge.explain_image(tiny, torch.rand(48, 48, 3), PROMPTS)  # a float HWC picture is refused, not guessed
    with pytest.raises(ValueError, match="multiples of the patch size"):
        ge.explain_image(tiny, torch.randn(3, 50, 48), PROMPTS)
    with pytest.raises(ValueError, match="NaN"):
        ge.explain_image(tiny, torch.full((3, 48, 48), float("inf")), PROMPTS)
    with pytest.warns(UserWarning, match=r"\[0, 1\].*unnormalised picture"):
        ge.explain_image(tiny, torch.rand(3, 48, 48), PROMPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ge.explain_image(tiny, pixels, PROMPTS)  # normalised pixels: no warning


def test_result_indexing_and_saving_are_checked(tiny, tmp_path):
    explanation = ge.explain_image(tiny, [rgb_array(40, 56), rgb_array(8, 8)], PROMPTS)
    assert explanation[-1].grid_sizes == [(1, 1)]
    assert explanation[np.int64(0)].grid_sizes == [(5, 7)]
    with pytest.raises(IndexError, match="image index 2 out of range for 2 images"):
        explanation[2]
    with pytest.raises(TypeError, match="must be an int"):
        explanation[0:1]
    with pytest.raises(IndexError, match="prompt index 5"):
        explanation.heatmap(0, 5)
    single = explanation.heatmap(1, -1)
    assert single.shape == (8, 8) and np.isfinite(single).all()
    explanation.settings["device_object"] = torch.device("cpu")  # not JSON: stored as text
    path = explanation.save(tmp_path / "maps")
    back = ge.ImageExplanation.load(path)
    assert back.settings["device_object"] == "cpu" and back.prompts == PROMPTS
    assert all(torch.equal(a, b) for a, b in zip(back.raw, explanation.raw))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved ImageExplanation"):
        ge.ImageExplanation.load(tmp_path / "other.npz")
    text = ge.explain_text(tiny, rgb_array(), ["a star"])
    with pytest.raises(IndexError, match="text index 1 out of range"):
        text.pair(0, 1)
