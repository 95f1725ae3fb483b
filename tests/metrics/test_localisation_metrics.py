"""Localisation metrics on hand-made maps and masks."""

import math

import numpy as np
import pytest
import torch

from gradeclip_utils.maps import resize_maps
from gradeclip_utils.metrics import dilate_masks, energy_pointing_game, localisation_scores, mask_iou, pointing_game


def _mask(h, w, ys, xs):
    m = np.zeros((h, w), dtype=bool)
    m[ys, xs] = True
    return m


def test_pointing_game_hit_and_miss():
    mask = _mask(8, 8, slice(2, 4), slice(2, 4))
    hit = np.zeros((8, 8)); hit[3, 3] = 1.0
    miss = np.zeros((8, 8)); miss[6, 6] = 1.0
    assert bool(pointing_game(hit, mask))
    assert not bool(pointing_game(miss, mask))
    out = pointing_game(np.stack([hit, miss]), mask)
    assert out.shape == (2,) and out.tolist() == [True, False]


def test_pointing_game_tolerance_is_euclidean_pixels():
    mask = _mask(16, 16, 5, 5)
    m = np.zeros((16, 16))
    m[5, 8] = 1.0            # 3 pixels to the right
    assert not bool(pointing_game(m, mask, tolerance=2))
    assert bool(pointing_game(m, mask, tolerance=3))
    d = np.zeros((16, 16))
    d[7, 7] = 1.0            # diagonal distance sqrt(8) = 2.83
    assert not bool(pointing_game(d, mask, tolerance=2.5))
    assert bool(pointing_game(d, mask, tolerance=2.9))


def test_pointing_game_degenerate_maps_miss():
    mask = np.ones((4, 4), dtype=bool)
    assert not bool(pointing_game(np.zeros((4, 4)), mask))          # flat: points nowhere
    nan_map = np.ones((4, 4)); nan_map[0, 0] = np.nan
    assert not bool(pointing_game(nan_map, mask))
    assert not bool(pointing_game(np.eye(4), np.zeros((4, 4), dtype=bool)))  # no target


def test_pointing_game_ties_and_negative_values():
    mask = _mask(4, 4, 0, 0)
    m = -np.ones((4, 4)); m[0, 0] = 0.0; m[3, 3] = 0.0  # tie between a hit and a miss
    assert bool(pointing_game(m, mask))


def test_energy_pointing_game_values():
    mask = _mask(4, 4, slice(0, 2), slice(0, 4))       # top half
    m = np.zeros((4, 4)); m[0, 0] = 3.0; m[3, 3] = 1.0
    assert float(energy_pointing_game(m, mask)) == pytest.approx(0.75)
    # negative values are ignored, positive scaling does not matter
    m2 = m.copy(); m2[2, 1] = -100.0
    assert float(energy_pointing_game(10 * m2, mask)) == pytest.approx(0.75)
    # a uniform map scores the mask's area share
    assert float(energy_pointing_game(np.ones((4, 4)), mask)) == pytest.approx(0.5)
    assert float(energy_pointing_game(np.zeros((4, 4)), mask)) == 0.0
    assert math.isnan(float(energy_pointing_game(m, np.zeros((4, 4), dtype=bool))))


def test_mask_iou_threshold_at_mean():
    mask = _mask(4, 4, slice(0, 2), slice(0, 2))       # 4 pixels
    m = np.zeros((4, 4)); m[0:2, 0:3] = 1.0            # 6 pixels above the mean (6/16)
    assert float(mask_iou(m, mask)) == pytest.approx(4 / 6)
    assert float(mask_iou(mask.astype(float), mask)) == pytest.approx(1.0)
    assert float(mask_iou(np.zeros((4, 4)), mask)) == 0.0   # nothing above the mean


def test_maps_are_upsampled_to_the_mask_grid():
    grid = np.zeros((2, 2)); grid[0, 1] = 1.0              # top-right patch
    mask = _mask(8, 8, slice(0, 4), slice(4, 8))
    assert bool(pointing_game(grid, mask))
    up = resize_maps(grid, (8, 8), dtype=torch.float64)  # the metrics' resizing
    assert up.shape == (8, 8) and float(up.max()) == pytest.approx(1.0)
    ref = torch.nn.functional.interpolate(torch.tensor(grid)[None, None], size=(8, 8), mode="bilinear",
                                          align_corners=False)[0, 0]
    assert torch.allclose(up, ref.double())
    assert float(energy_pointing_game(grid, mask)) > 0.5


def test_batched_broadcast_torch_inputs():
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 2, 2] = masks[2, 5, 5] = True
    maps = torch.zeros(3, 2, 6, 6)                         # B x K x h x w against B x 1 x H x W
    maps[0, 0, 0, 0] = 1; maps[0, 1, 5, 5] = 1
    maps[1, 0, 2, 2] = 1; maps[1, 1, 2, 2] = 1
    maps[2, 0, 0, 0] = 1; maps[2, 1, 5, 5] = 1
    pg = pointing_game(maps, masks[:, None])
    assert pg.shape == (3, 2)
    assert pg.tolist() == [[True, False], [True, True], [False, True]]
    scores = localisation_scores(maps, masks[:, None])
    assert set(scores) == {"pointing", "pointing_strict", "energy", "iou", "area_share"}
    np.testing.assert_array_equal(scores["pointing_strict"], pg)
    wide = localisation_scores(maps, masks[:, None], tolerance=8.0)   # every pixel is within 8 px of the mask
    assert wide["pointing"].all() and np.array_equal(wide["pointing_strict"], pg)
    assert scores["energy"].shape == (3, 2)
    np.testing.assert_allclose(scores["area_share"], np.full((3, 2), 1 / 36))
    np.testing.assert_allclose(scores["energy"], pg.astype(float))


def test_dilate_masks_disk():
    m = _mask(7, 7, 3, 3)
    d = dilate_masks(m, 1.0).numpy()
    assert d.sum() == 5                                    # plus shape, not the 3x3 square
    assert dilate_masks(m, 1.5).numpy().sum() == 9


# ------------------------------------------------ non-square masks, maps of another grid aspect (hand values)
def test_pointing_game_on_a_wide_mask_with_a_tall_patch_grid():
    """A 3 x 2 grid (taller than wide) on a 6 x 16 mask (wider than tall). By hand, bilinear with
    align_corners=False: output pixel x samples input column (x + 0.5) * 2 / 16 - 0.5, clamped at the
    edges, so a one-hot patch (0, 1) upsamples to 1 exactly at row 0, columns 12..15 (x >= 11.5), to
    0.9375 at (0, 11) and to 0.75 at (1, 12..15)."""
    grid = np.zeros((3, 2)); grid[0, 1] = 1.0
    assert bool(pointing_game(grid, _mask(6, 16, 0, 12)))
    assert bool(pointing_game(grid, _mask(6, 16, 0, 15)))
    assert not bool(pointing_game(grid, _mask(6, 16, 0, 11)))        # 0.9375 < 1: not a maximum
    assert not bool(pointing_game(grid, _mask(6, 16, 1, 12)))        # 0.75
    assert bool(pointing_game(grid, _mask(6, 16, 1, 12), tolerance=1.0))   # one pixel below a maximum
    assert bool(pointing_game(grid, _mask(6, 16, 0, 11), tolerance=1.0))
    assert not bool(pointing_game(grid, _mask(6, 16, 2, 10), tolerance=2.0))  # nearest maximum (0, 12): sqrt(8)
    assert bool(pointing_game(grid, _mask(6, 16, 2, 10), tolerance=2.9))


def test_energy_and_iou_on_a_map_of_another_aspect():
    """A 1 x 2 map [1, 3] on a 2 x 8 mask: by hand, each row upsamples to
    [1, 1, 1.25, 1.75, 2.25, 2.75, 3, 3] (sum 16, mean 2)."""
    grid = np.array([[1.0, 3.0]])
    left = _mask(2, 8, slice(0, 2), slice(0, 4))
    assert float(energy_pointing_game(grid, left)) == pytest.approx((1 + 1 + 1.25 + 1.75) / 16)
    top_right = _mask(2, 8, 0, slice(6, 8))
    assert float(energy_pointing_game(grid, top_right)) == pytest.approx(6 / 32)
    middle = _mask(2, 8, slice(0, 2), slice(3, 7))                   # columns 3..6
    # above the mean 2: columns 4..7; intersection 3 columns, union columns 3..7, both rows
    assert float(mask_iou(grid, middle)) == pytest.approx(6 / 10)
    scores = localisation_scores(np.stack([grid, grid[:, ::-1]]), np.stack([left, left]))
    np.testing.assert_allclose(scores["energy"], [5 / 16, 11 / 16])
    np.testing.assert_allclose(scores["area_share"], [0.5, 0.5])
    assert scores["pointing"].tolist() == [False, True]               # maxima at columns 6-7, then 0-1


def test_pointing_tolerance_is_euclidean_on_a_non_square_grid():
    mask = _mask(7, 20, 1, 2)
    peak = np.zeros((7, 20)); peak[4, 6] = 1.0                        # (3, 4) away: distance 5
    assert not bool(pointing_game(peak, mask, tolerance=4.99))
    assert bool(pointing_game(peak, mask, tolerance=5.0))
    transposed = _mask(20, 7, 2, 1)
    assert not bool(pointing_game(peak.T, transposed, tolerance=4.99))
    assert bool(pointing_game(peak.T, transposed, tolerance=5.0))


def test_default_tolerance_of_the_metrics_is_strict():
    """pointing_game and localisation_scores count only a maximum inside the mask unless told otherwise;
    the evaluations pass their own 4 px (pinned in test_evaluate.py)."""
    mask = _mask(5, 9, 2, 4)
    beside = np.zeros((5, 9)); beside[2, 5] = 1.0                     # one pixel to the right
    assert not bool(pointing_game(beside, mask))
    assert not bool(localisation_scores(beside, mask)["pointing"])
    assert bool(localisation_scores(beside, mask, tolerance=1.0)["pointing"])
