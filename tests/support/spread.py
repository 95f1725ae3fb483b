"""The tolerance docs/reproducibility.md states for per-image values computed another way (another CPU,
thread count or batch size): every value within the measured rounding (1e-5), except a bounded number of
(image, method) pairs whose deletion or insertion curve took another step where near-tied pixels were
ordered the other way, none of them beyond twice the largest move measured for its kind; pointing-game
flips counted against their bound. The bounds are read from docs/results/cpu_spread.json."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _cpu_spread():
    script = importlib.util.spec_from_file_location("cpu_spread", RESULTS.parents[1] / "scripts" / "cpu_spread.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    return module


def assert_within_spread(rows: list[dict], want: list[dict]) -> None:
    """``rows`` (per_image.csv rows) agree with ``want`` (the same (key, method) pairs) within the measured
    spread (see the module docstring)."""
    cpu_spread = _cpu_spread()
    spread = json.loads((RESULTS / "cpu_spread.json").read_text())
    rounding, worst = spread["rounding"], spread["worst"]
    wanted = {(row["key"], row["method"]): row for row in want}
    assert set(wanted) == {(row["key"], row["method"]) for row in rows} and len(rows) == len(want)
    columns = [c for c in rows[0] if cpu_spread.column_kind(c) is not None]
    flips, moved, off = 0, [], []
    for row in rows:
        other = wanted[(row["key"], row["method"])]
        pair_moved = False
        for column in columns:
            kind = cpu_spread.column_kind(column)
            a, b = float(row[column]), float(other[column])
            if math.isnan(a) and math.isnan(b):
                continue
            difference = abs(a - b)
            if kind == "pointing":
                flips += difference > 0
                continue
            group = cpu_spread.value_group(column, row["method"])
            pair_moved |= difference > rounding
            if not difference <= max(2 * worst["largest"][group], rounding):
                off.append(f"{row['key']} {row['method']} {column}: {a} against {b}")
        if pair_moved:
            moved.append(f"{row['key']} {row['method']}")
    allowed_moved = math.ceil(3 * worst["moved_pair_share"] * len(rows))
    allowed_flips = max(1, math.ceil(3 * worst["flip_share"] * len(rows) * len(cpu_spread.DISCRETE)))
    assert not off, "moved beyond twice the largest move measured:\n" + "\n".join(off)
    assert len(moved) <= allowed_moved, f"{len(moved)} pairs moved beyond rounding ({allowed_moved} allowed): {moved}"
    assert flips <= allowed_flips, f"{flips} pointing games flipped ({allowed_flips} allowed)"
