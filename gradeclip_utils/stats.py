"""Confidence intervals, one implementation each: the percentile bootstrap (of any statistic, and of a
paired difference) and the Wilson score interval of a proportion."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np

#: resampled values drawn at a time (the draws do not depend on it: numpy's generator gives the same
#: stream however the indices are split into calls); bounds the memory of a bootstrap over many values
_BLOCK = 1 << 22


class Interval(NamedTuple):
    """A statistic and its confidence interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, *,
                 resamples: int = 1000, tail: float = 0.025, seed: int = 0) -> Interval:
    """``statistic`` of ``values`` (non-finite values dropped) with its percentile-bootstrap interval.

    The values are resampled with replacement ``resamples`` times, the indices drawn from
    ``numpy.random.default_rng(seed)`` one resample after the other; the interval runs from the
    ``tail`` to the ``1 - tail`` quantile of the resampled statistic (linear interpolation, numpy's
    default): 95% for the default 0.025. One value gives (value, value, value); none gives NaNs.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan)
    estimate = float(statistic(data))
    if data.size == 1:
        return Interval(estimate, estimate, estimate)
    rng = np.random.default_rng(seed)
    step = max(1, _BLOCK // data.size)
    parts = []
    for start in range(0, resamples, step):
        rows = data[rng.integers(0, data.size, (min(step, resamples - start), data.size))]
        parts.append(rows.mean(axis=1) if statistic is np.mean else np.array([statistic(row) for row in rows]))
    resampled = np.concatenate(parts)
    return Interval(estimate, float(np.quantile(resampled, tail)), float(np.quantile(resampled, 1 - tail)))


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = 1000,
                      tail: float = 0.025, seed: int = 0) -> Interval:
    """Mean of a - b over paired items with its percentile-bootstrap interval (see ``bootstrap_ci``)."""
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return bootstrap_ci(difference, resamples=resamples, tail=tail, seed=seed)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
