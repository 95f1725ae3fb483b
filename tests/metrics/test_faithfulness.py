"""Deletion and insertion curves and AUC against hand-computed values and a literal re-computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradeclip_utils.metrics import (AUC_DEFINITION, area_under_curve, authors_heatmap, authors_perturbation_curves,
                                     perturbation_curves, perturbation_curves_over_ties, pixel_order, pixel_ranks,
                                     shrink_to_640)

SIZE = 20
REGION = (slice(4, 8), slice(5, 15))  # 40 of 400 pixels: the "object"
MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # pixel space = model input space


class RegionModel:
    """An analytic 'model': embedding = [mean of channel 0 over the object, 0.2]."""

    def __init__(self, region=REGION):
        self.region = region

    def encode_image(self, pixels):
        m = pixels[:, 0, self.region[0], self.region[1]].mean(dim=(-1, -2))
        return torch.stack([m, torch.full_like(m, 0.2)], dim=-1)


CLASSES = torch.eye(2)


def scene(size=(SIZE, SIZE), region=REGION):
    image = torch.full((1, 3, *size), 0.5)
    image[:, :, region[0], region[1]] = 1.0
    return image


def object_map(reverse=False, size=(SIZE, SIZE), region=REGION):
    inside = torch.zeros(size)
    inside[region] = 1.0
    jitter = torch.arange(size[0] * size[1], dtype=torch.float32).reshape(size) * 1e-4  # no ties
    return ((1 - inside) if reverse else inside) * 10 + jitter


def test_area_under_curve_hand_values():
    assert area_under_curve([0, 0.25, 0.5], np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert area_under_curve([0, 0.1, 0.5], np.array([1.0, 0.0, 0.0])) == pytest.approx(0.05 / 0.5)
    assert np.allclose(area_under_curve([0, 0.5], np.array([[0.3, 0.3], [0.0, 1.0]])), [0.3, 0.5])
    with pytest.raises(ValueError):
        area_under_curve([0.0], np.array([1.0]))
    assert "trapezoidal" in AUC_DEFINITION and "lower is better" in AUC_DEFINITION


def test_pixel_ranks_hand_values():
    ranks = pixel_ranks(torch.tensor([[[0.1, 0.9], [0.5, 0.5]]]), (2, 2), ties="raster")
    assert ranks.tolist() == [[[3, 0], [1, 2]]]  # tie between the two 0.5s in raster order
    up = pixel_ranks(torch.tensor([[[0.0, 1.0]]]), (1, 4))  # bilinear: 0, 0.25, 0.75, 1
    assert up.tolist() == [[[3, 2, 1, 0]]]


def test_insertion_curve_hand_values():
    curves = perturbation_curves(RegionModel(), scene(), object_map()[None], CLASSES, [0], mean=MEAN, std=STD)
    assert np.allclose(curves.fractions, np.arange(11) * 0.05)
    # inserted: 0, 20, 40, ... pixels, the object's first: its mean is 0, 0.5, then 1
    m = np.array([0.0, 0.5] + [1.0] * 9)
    expected_score = m / np.sqrt(m ** 2 + 0.04)
    assert np.allclose(curves.insertion["score"][0], expected_score, atol=1e-6)
    assert np.array_equal(curves.insertion["accuracy"][0], (m > 0.2).astype(float))
    logits = 100 * np.stack([m, np.full_like(m, 0.2)], -1) / np.sqrt(m ** 2 + 0.04)[:, None]
    prob = np.exp(logits[:, 0]) / np.exp(logits).sum(-1)
    assert np.allclose(curves.insertion["probability"][0], prob, atol=1e-5)
    auc = (expected_score[0] / 2 + expected_score[1:-1].sum() + expected_score[-1] / 2) * 0.05 / 0.5
    assert curves.auc("insertion")[0] == pytest.approx(auc, abs=1e-6)


def literal_bilinear(grid, size):
    """Bilinear upsampling with align_corners=False, written out: output pixel y samples the input at
    (y + 0.5) * h / H - 0.5, clamped at 0, between rows floor and floor + 1 (the last row repeats)."""
    h, w = grid.shape
    out = torch.zeros(size, dtype=torch.float64)

    def taps(dst, n_in, n_out):
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        low = int(math.floor(src))
        return low, min(low + 1, n_in - 1), src - low

    for y in range(size[0]):
        y0, y1, ty = taps(y, h, size[0])
        for x in range(size[1]):
            x0, x1, tx = taps(x, w, size[1])
            top = (1 - tx) * float(grid[y0, x0]) + tx * float(grid[y0, x1])
            bottom = (1 - tx) * float(grid[y1, x0]) + tx * float(grid[y1, x1])
            out[y, x] = (1 - ty) * top + ty * bottom
    return out


def literal_curves(image, saliency, seed, kind, region=REGION):
    """Step by step as the protocol reads: 0.5% of the pixels at a time, scored every 10 steps; a map on
    a coarser grid is first upsampled to the image; ties go in raster order."""
    height, width = image.shape[-2:]
    model = RegionModel(region)
    if tuple(saliency.shape) != (height, width):
        saliency = literal_bilinear(saliency, (height, width))
    values = saliency.flatten().tolist()
    order = sorted(range(height * width), key=lambda i: (-values[i], i))
    noise = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    current = image.clone() if kind == "deletion" else torch.zeros_like(image)
    scores, changed = [], 0
    for step in range(101):
        target = round(step * 0.005 * height * width)
        for index in order[changed:target]:
            r, c = divmod(index, width)
            current[0, :, r, c] = noise[0, :, r, c] if kind == "deletion" else image[0, :, r, c]
        changed = target
        if step % 10 == 0:
            e = model.encode_image(current)[0]
            scores.append(float(e[0] / e.norm()))
    return np.array(scores)


@pytest.mark.parametrize("reverse", [False, True])
def test_curves_equal_step_by_step_protocol(reverse):
    saliency = object_map(reverse)
    curves = perturbation_curves(RegionModel(), scene(), saliency[None], CLASSES, [0], mean=MEAN, std=STD, seed=3)
    for kind in ("deletion", "insertion"):
        expected = literal_curves(scene(), saliency, 3, kind)
        assert np.allclose(getattr(curves, kind)["score"][0], expected, atol=1e-6)


def trapezoid(y, x):
    return float(sum((y[i] + y[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(len(x) - 1)))


WIDE, WIDE_REGION = (8, 25), (slice(2, 4), slice(5, 15))  # 200 pixels, an object of 20


def test_insertion_curve_hand_values_on_a_non_square_image():
    """8 x 25 = 200 pixels, 1 pixel per 0.5% step: at 0, 5%, 10%, ... 0, 10, 20, ... pixels are inserted,
    the object's 20 first, so its mean is 0, 0.5, then 1 (an H x H count would give 0, 3, 6, ... of 64)."""
    model = RegionModel(WIDE_REGION)
    curves = perturbation_curves(model, scene(WIDE, WIDE_REGION), object_map(size=WIDE, region=WIDE_REGION)[None],
                                 CLASSES, [0], mean=MEAN, std=STD)
    m = np.array([0.0, 0.5] + [1.0] * 9)
    expected = m / np.sqrt(m ** 2 + 0.04)
    assert np.allclose(curves.insertion["score"][0], expected, atol=1e-6)
    assert curves.auc("insertion")[0] == pytest.approx(trapezoid(expected, np.arange(11) * 0.05) / 0.5, abs=1e-6)
    # deletion: the object's pixels are replaced first, by the seeded random picture's values
    noise = torch.rand(1, 3, *WIDE, generator=torch.Generator().manual_seed(0))[0, 0][WIDE_REGION]
    flat = noise.flatten().flip(0)  # the object's pixels in the map's order: the jitter ranks the last first
    deleted = [0, 10, 20] + [20] * 8
    means = np.array([(float(flat[:k].sum()) + (20 - k) * 1.0) / 20 for k in deleted])
    assert np.allclose(curves.deletion["score"][0], means / np.sqrt(means ** 2 + 0.04), atol=1e-6)


def test_pixel_ranks_of_maps_whose_grid_aspect_differs_from_the_image():
    """By hand (bilinear, align_corners=False): a 2 x 1 map [[1], [0]] on a 4 x 6 image gives rows
    1, 0.75, 0.25, 0, so ranks run row by row; a 1 x 3 map [0, 1, 2] on a 2 x 8 image gives columns
    0, 0.0625, 0.4375, ..., 1.9375, 2, so ranks run from the right, the two tied rows in raster order
    (``ties="raster"``; the default random tie order is tested below)."""
    tall = pixel_ranks(torch.tensor([[[1.0], [0.0]]]), (4, 6), ties="raster")
    assert tall[0].tolist() == torch.arange(24).reshape(4, 6).tolist()
    wide = pixel_ranks(torch.tensor([[[0.0, 1.0, 2.0]]]), (2, 8), ties="raster")
    expected = [[2 * (7 - x) + r for x in range(8)] for r in range(2)]
    assert wide[0].tolist() == expected


@pytest.mark.parametrize("grid", [(8, 25), (2, 5), (3, 2)], ids=["pixels", "coarse", "other-aspect"])
def test_curves_on_a_non_square_image_equal_the_step_by_step_protocol(grid):
    generator = torch.Generator().manual_seed(7)
    saliency = torch.rand(*grid, generator=generator)
    image = scene(WIDE, WIDE_REGION)
    curves = perturbation_curves(RegionModel(WIDE_REGION), image, saliency[None], CLASSES, [0], mean=MEAN, std=STD,
                                 seed=4, ties="raster")  # the upsampled edges tie: raster order, as the literal
    for kind in ("deletion", "insertion"):
        expected = literal_curves(image, saliency, 4, kind, WIDE_REGION)
        assert np.allclose(getattr(curves, kind)["score"][0], expected, atol=1e-6), kind


def test_auc_definition_is_what_is_computed():
    """AUC_DEFINITION is printed in every table; it must say what the code computes: the trapezoid over
    the 11 scored fractions 0, 5%, ..., 50%, divided by the x-range 0.5 (the curve's mean height)."""
    curves = perturbation_curves(RegionModel(), scene(), object_map()[None], CLASSES, [0], mean=MEAN, std=STD)
    assert np.allclose(curves.fractions, np.linspace(0.0, 0.5, 11))
    for kind in ("deletion", "insertion"):
        values = getattr(curves, kind)["score"][0]
        assert curves.auc(kind)[0] == pytest.approx(trapezoid(values, curves.fractions) / 0.5, abs=1e-9)
    assert area_under_curve([0, 0.25, 0.5], np.array([0.2, 0.2, 0.2])) == pytest.approx(0.2)  # mean height
    for phrase in ("trapezoidal", "0 to 50%", "every 5%", "divided by the x-range (0.5)", "mean height",
                   "random RGB", "black image", "lower is better", "higher is better"):
        assert phrase in AUC_DEFINITION, phrase


def test_object_first_map_beats_its_reverse():
    images = scene().expand(2, -1, -1, -1).contiguous()
    maps = torch.stack([object_map(), object_map(reverse=True)])
    curves = perturbation_curves(RegionModel(), images, maps, CLASSES, [0, 0], mean=MEAN, std=STD)
    deletion, insertion = curves.auc("deletion"), curves.auc("insertion")
    assert deletion[0] < deletion[1]
    assert insertion[0] > insertion[1]


def test_batching_and_chunking_do_not_change_curves(tiny):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(3, 3, 48, 48, generator=generator)
    maps = torch.rand(3, 6, 6, generator=generator)
    classes = torch.nn.functional.normalize(torch.randn(5, tiny.adapter.embed_dim, generator=generator), dim=-1)
    kwargs = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25), seed=1)
    together = perturbation_curves(tiny.adapter, pixels, maps, classes, [0, 3, 4], batch_size=7, **kwargs)
    alone = perturbation_curves(tiny.adapter, pixels[1:2], maps[1:2], classes, [3], batch_size=64,
                                **{**kwargs, "seed": 1})
    # image 1's random picture differs when drawn alone, so compare insertion (no randomness) exactly
    for measure in ("accuracy", "score", "probability"):
        assert np.allclose(together.insertion[measure][1], alone.insertion[measure][0], atol=1e-5)
    assert together.deletion["score"].shape == (3, 11)
    # with one seed per image, deletion too is independent of the batch
    seeded = perturbation_curves(tiny.adapter, pixels, maps, classes, [0, 3, 4], **{**kwargs, "seed": [5, 6, 7]})
    single = perturbation_curves(tiny.adapter, pixels[1:2], maps[1:2], classes, [3], **{**kwargs, "seed": [6]})
    assert np.allclose(seeded.deletion["score"][1], single.deletion["score"][0], atol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="label"):
        perturbation_curves(RegionModel(), scene(), object_map()[None], CLASSES, [2], mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="NaN"):
        pixel_ranks(torch.full((1, 2, 2), math.nan), (2, 2))


def test_tied_pixels_follow_a_seeded_permutation_the_same_for_two_methods():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(6, 6, generator=generator)
    a[a < 0.6] = 0.0  # a ReLU map: most pixels tie at zero
    b = 2 * a  # another method whose map orders and ties the pixels as the first does
    size = (12, 12)
    ranks_a = pixel_ranks(a[None], size, seed=7)[0].flatten()
    ranks_b = pixel_ranks(b[None], size, seed=7)[0].flatten()
    assert torch.equal(ranks_a, ranks_b)
    up = torch.nn.functional.interpolate(a[None, None].double(), size=size, mode="bilinear", align_corners=False).flatten()
    tied = (up == 0).nonzero().flatten()
    assert len(tied) > 20
    # independently: tied pixels come last, in the order they take in randperm(P, seed)
    position = torch.empty(up.numel(), dtype=torch.long)
    position[torch.randperm(up.numel(), generator=torch.Generator().manual_seed(7))] = torch.arange(up.numel())
    expected = tied[torch.argsort(position[tied])]
    assert torch.equal(torch.argsort(ranks_a)[-len(tied):], expected)
    assert not torch.equal(ranks_a, pixel_ranks(a[None], size, seed=8)[0].flatten())  # another seed, another order
    assert torch.equal(pixel_ranks(a[None], size, seed=[7])[0].flatten(), ranks_a)
    untied = torch.argsort(ranks_a)[:up.numel() - len(tied)]
    assert (up[untied][1:] <= up[untied][:-1]).all()  # the rest by value
    assert torch.equal(pixel_order(up, ties="numpy"), torch.from_numpy(np.argsort(-up.numpy())))
    with pytest.raises(ValueError, match="ties must be one of"):
        pixel_order(up, ties="first")


def test_tie_order_moves_an_auc_that_a_shared_seed_keeps():
    images = scene()
    flat = torch.zeros(1, SIZE, SIZE)  # a map that ties everywhere
    one = perturbation_curves(RegionModel(), images, flat, CLASSES, [0], mean=MEAN, std=STD, tie_seed=1)
    again = perturbation_curves(RegionModel(), images, flat * 5, CLASSES, [0], mean=MEAN, std=STD, tie_seed=1)
    other = perturbation_curves(RegionModel(), images, flat, CLASSES, [0], mean=MEAN, std=STD, tie_seed=2)
    assert np.array_equal(one.insertion["score"], again.insertion["score"])
    assert not np.array_equal(one.insertion["score"], other.insertion["score"])


class RecordingPreprocess:
    """The model's preprocessing stand-in: picture to (3, H, W) floats in [0, 1], every picture kept."""

    def __init__(self):
        self.pictures = []

    def __call__(self, picture):
        array = np.array(picture)
        self.pictures.append(array)
        return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def test_authors_protocol_hand_computed_pixel_counts_and_points():
    """A 30 x 40 picture: int(1200 / 200) = 6 pixels per step, 60 k pixels changed at the k-th scored point;
    deletion's pixels take torch.rand(6, 3) * 255 (truncated) drawn step by step, insertion copies them into
    black; the points are the analytic model's scores of those pictures, against the given label."""
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = rng.integers(1, 256, (30, 40, 3), dtype=np.uint8)
    heatmap = rng.random((30, 40)).astype(np.float32)
    order = np.argsort(-heatmap.reshape(-1))

    class Brightness:
        """embedding = [mean red, 0.3]: the score of class 0 grows with the picture's red."""

        def encode_image(self, pixels):
            red = pixels[:, 0].mean(dim=(-1, -2))
            return torch.stack([red, torch.full_like(red, 0.3)], dim=-1)

    preprocess = RecordingPreprocess()
    curves = authors_perturbation_curves(Brightness().encode_image, preprocess, Image.fromarray(picture), heatmap,
                                         CLASSES, 0, seed=5)
    seen = preprocess.pictures  # the picture, then each scored step's deleted and inserted pictures, the picture
    deletion, insertion = seen[:1] + seen[1:21:2], seen[2:21:2] + seen[21:]
    assert len(deletion) == 11 and len(insertion) == 11
    assert np.array_equal(deletion[0], picture) and np.array_equal(insertion[-1], picture)
    generator = torch.Generator().manual_seed(5)
    draws = [(torch.rand(6, 3, generator=generator) * 255.).numpy().astype(np.uint8) for _ in range(100)]
    for k in range(1, 11):
        changed = order[:60 * k]
        flat_del, flat_ins = deletion[k].reshape(-1, 3), insertion[k - 1].reshape(-1, 3)
        assert np.array_equal(flat_del[changed], np.concatenate(draws[:10 * k]))
        assert np.array_equal(np.delete(flat_del, changed, axis=0), np.delete(picture.reshape(-1, 3), changed, axis=0))
        assert (flat_ins.any(axis=1)).sum() == 60 * k  # the picture has no black pixel
        assert np.array_equal(flat_ins[changed], picture.reshape(-1, 3)[changed])
    for kind, pictures in (("deletion", deletion), ("insertion", insertion)):
        red = np.array([p[..., 0].mean() / 255 for p in pictures])
        score = red / np.sqrt(red ** 2 + 0.09)
        assert np.allclose(curves.__dict__[kind]["score"][0], score, atol=1e-5)
        assert np.array_equal(curves.__dict__[kind]["accuracy"][0], (red > 0.3).astype(float))
    assert np.allclose(curves.fractions, np.arange(11) * 0.05)
    assert np.allclose(curves.insertion_fractions, list(np.arange(1, 11) * 0.05) + [1.0])
    # insertion's AUC runs over 5% ... 50% (the whole picture is the same for every method)
    ins = curves.insertion["score"][0]
    assert curves.auc("insertion")[0] == pytest.approx(area_under_curve(np.arange(1, 11) * 0.05, ins[:10]))


def test_authors_map_is_normalised_on_its_grid_then_resized_and_large_pictures_shrink():
    from PIL import Image

    grid = torch.tensor([[0.0, 2.0], [4.0, 8.0]])
    heat = authors_heatmap(grid, (4, 6))
    expected = torch.nn.functional.interpolate((grid / 8)[None, None], size=(4, 6), mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    assert heat.shape == (4, 6) and np.allclose(heat, expected, atol=1e-6)
    assert shrink_to_640(Image.new("RGB", (1000, 800))).size == (800, 640)  # scale 800 / 640 = 1.25
    assert shrink_to_640(Image.new("RGB", (700, 641))).size == (698, 640)  # int(700 / (641 / 640))
    assert shrink_to_640(Image.new("RGB", (900, 640))).size == (900, 640)  # short side 640: kept


@pytest.mark.parametrize("size", [(50, 70), (300, 410)])
def test_authors_map_of_m2ib_and_surgery_comes_upsampled_to_the_input_then_is_resized(size):
    """M2IB's vision_heatmap and CLIP Surgery's get_similarity_map hand over the map already upsampled to
    the input (F.interpolate, bilinear); the authors' script min-max normalises it and resizes it with
    torchvision's Resize((h, w)) (antialiased, so a picture smaller than the input differs)."""
    from torchvision.transforms import Resize

    grid = torch.rand(7, 7, generator=torch.Generator().manual_seed(3)) * 5 - 1
    at_input = torch.nn.functional.interpolate(grid[None, None], size=(224, 224), mode="bilinear")[0, 0]
    at_input = (at_input - at_input.min()) / (at_input.max() - at_input.min())
    expected = Resize(size)(at_input[None])[0].numpy()
    heat = authors_heatmap(grid, size, via=(224, 224))
    assert heat.shape == size and np.allclose(heat, expected, atol=1e-5)
    assert not np.allclose(authors_heatmap(grid, size), expected, atol=1e-3)  # one step is another map


class CountingEncoder:
    """The tiny model's image encoder, counting the pictures it is given."""

    def __init__(self, adapter):
        self.adapter, self.pictures = adapter, 0

    def encode_image(self, pixels):
        self.pictures += pixels.shape[0]
        return self.adapter.encode_image(pixels)


def test_curves_over_several_tie_seeds_equal_separate_calls_and_encode_alike_pictures_once(tiny):
    generator = torch.Generator().manual_seed(4)
    pixels = torch.randn(3, 3, 48, 48, generator=generator)
    maps = torch.rand(3, 6, 6, generator=generator)
    maps[maps < 0.55] = 0.0  # ReLU-like maps: about half the pixels tie at zero
    classes = torch.nn.functional.normalize(torch.randn(5, tiny.adapter.embed_dim, generator=generator), dim=-1)
    kwargs = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25), seed=[1, 2, 3], batch_size=16)
    tie_seeds = [[10, 11, 12], 5, [20, 21, 22]]
    counting = CountingEncoder(tiny.adapter)
    together = perturbation_curves_over_ties(counting, pixels, maps, classes, [0, 3, 4], tie_seeds=tie_seeds, **kwargs)
    separate = [perturbation_curves(tiny.adapter, pixels, maps, classes, [0, 3, 4], tie_seed=t, **kwargs)
                for t in tie_seeds]
    assert len(together) == 3
    for got, want in zip(together, separate):
        for kind in ("deletion", "insertion"):
            for measure in ("accuracy", "score", "probability"):
                assert np.allclose(getattr(got, kind)[measure], getattr(want, kind)[measure], atol=1e-5)
        assert np.allclose(got.auc("insertion"), want.auc("insertion"), atol=1e-6)
    # the pictures the extra tie orders make differently, counted literally from the ranks
    counts = [round(n * 0.005 * 48 * 48) for n in range(0, 101, 10)]
    differ = 0
    for t in tie_seeds[1:]:
        for b in range(3):
            first = pixel_ranks(maps[b:b + 1], (48, 48), seed=tie_seeds[0][b])[0]
            other = pixel_ranks(maps[b:b + 1], (48, 48), seed=t if isinstance(t, int) else t[b])[0]
            differ += sum(not torch.equal(first < c, other < c) for c in counts)
    assert 0 < differ < 2 * 3 * 11  # some boundaries fall inside the zeros' tie, not all (0% never does)
    assert counting.pictures == 2 * (3 * 11 + differ)  # deletion and insertion
    # maps without ties (at the image's size, all values distinct): extra tie seeds encode nothing
    distinct = torch.randperm(3 * 48 * 48, generator=generator).float().reshape(3, 48, 48)
    counting.pictures = 0
    perturbation_curves_over_ties(counting, pixels, distinct, classes, [0, 3, 4], tie_seeds=tie_seeds, **kwargs)
    assert counting.pictures == 2 * 3 * 11
    with pytest.raises(ValueError, match="at least one tie seed"):
        perturbation_curves_over_ties(counting, pixels, maps, classes, [0, 3, 4], tie_seeds=[], **kwargs)
