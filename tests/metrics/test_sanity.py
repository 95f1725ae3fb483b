"""The cascading randomisation check: its statistics against hand values and independent code, and
that it separates a map that depends on the weights from one that does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from gradeclip_utils.metrics import cascading_randomisation, spearman, ssim


def test_spearman_hand_values_and_ties():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    a = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    # ranks a = (1, 2.5, 2.5, 4), b = (1, 3, 2, 4): rho = 4.5 / sqrt(4.5 * 5)
    assert spearman(a, b) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman(torch.ones(3, 3), x.repeat(2, 2)[:3, :3]) == 0.0
    assert spearman(torch.zeros(3, 3), torch.zeros(3, 3)) == 1.0
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 5, (4, 6, 6)).astype(float), rng.normal(size=(4, 6, 6))
    ours = spearman(u, v)
    assert np.allclose(ours, [spearmanr(u[i].ravel(), v[i].ravel()).statistic for i in range(4)])


def literal_ssim(x, y, window=7):
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for r in range(x.shape[0] - window + 1):
        for c in range(x.shape[1] - window + 1):
            a, b = x[r:r + window, c:c + window].ravel(), y[r:r + window, c:c + window].ravel()
            va, vb = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - a.mean()) * (b - b.mean())).sum() / (a.size - 1)
            values.append((2 * a.mean() * b.mean() + c1) * (2 * cov + c2)
                          / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_hand_values_and_literal_windows():
    assert ssim(np.zeros((7, 7)), np.ones((7, 7))) == pytest.approx(1e-4 / 1.0001)
    rng = np.random.default_rng(1)
    x = rng.random((9, 11))
    assert ssim(x, x) == pytest.approx(1.0)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(literal_ssim(x, y), abs=1e-10)
    assert ssim(x, 1 - x) < 0
    with pytest.raises(ValueError, match="window"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))


def image_only_map(model, pixels, targets):
    """A 'map' that ignores the model: the image's brightness pooled to the patch grid."""
    pooled = F.avg_pool2d(pixels.mean(dim=1, keepdim=True), 8)[:, 0]
    return pooled.unsqueeze(1).expand(-1, targets.shape[0], -1, -1)


def test_sanity_check_separates_weight_dependent_maps(tiny):
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        targets = F.normalize(tiny.model.encode_text(tiny.tokenize(["a red circle", "a blue star"])), dim=-1)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    dependent = cascading_randomisation(tiny, pixels, targets, "grad_eclip", seed=0)
    independent = cascading_randomisation(tiny, pixels, targets, image_only_map, seed=0)
    assert dependent.stages == ["original", "head", "block 2", "block 1", "block 0", "embedding"]
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items()), "the model was modified"
    assert dependent.spearman[0].shape == (3, 2) and np.allclose(dependent.spearman[0], 1.0)
    final_dependent = [row["spearman"] for row in dependent.summary()][-1]
    final_ssim = [row["ssim"] for row in dependent.summary()][-1]
    assert np.allclose(independent.spearman[-1], 1.0) and np.allclose(independent.ssim[-1], 1.0)
    assert final_dependent < 0.5 and final_ssim < 0.5
