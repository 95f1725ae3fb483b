"""The evaluation's speed table: each method's time per (image, prompt) as a multiple of one plain image
forward pass, measured side by side with it (``..timing``: the harness shared with ``benchmarks/speed.py``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from ..timing import Case, Meter, run_alternating
from . import methods as method_calls  # called through the module: replacing one replaces it in every phase


def measure_speed(model, pixels: torch.Tensor, classifier: torch.Tensor, methods: Sequence[str],
                  options: dict[str, dict[str, Any]], prompts: Sequence[int] = (1, 8), repeats: int = 5,
                  slow_seconds: float = 5.0, budget_seconds: float = 1.0, max_runs: int = 50
                  ) -> list[dict[str, Any]]:
    """Seconds of each method on one batch with 1 and 8 prompts, and of one plain ``encode_image``
    forward of the same batch, timed in alternation with it.

    Each is timed by its fastest run (the run least disturbed by other work on a shared machine): at
    least ``repeats`` runs after a warm-up and more, up to ``max_runs``, until ``budget_seconds`` are
    spent; two runs when the warm-up took over ``slow_seconds``. Rows also hold ``ratio_k{count}``
    (``speed_ratios`` over the measured rows).
    """
    meter = Meter(model.device, collect_garbage=False)
    pixels = pixels.to(model.device)

    def forward() -> Any:
        with torch.no_grad():
            return model.adapter.encode_image(pixels)

    rows = []
    batch = pixels.shape[0]
    meter.run(forward)
    for name in tqdm(methods, desc="timing", leave=False):
        row: dict[str, Any] = {"method": name, "images": batch}
        for count in prompts:
            targets = classifier[torch.arange(count) % classifier.shape[0]]
            call = lambda: method_calls.run_method(model, name, pixels, targets, options[name])  # noqa: E731
            case = Case(name, "method", call, k=count, statistic=min)
            plain = Case("plain forward", "forward", forward, k=count, statistic=min)
            run_alternating(case, plain, meter, repeats=repeats, slow_seconds=slow_seconds,
                            budget_seconds=budget_seconds, max_runs=max_runs)
            row[f"seconds_k{count}"] = case.wall
            row[f"forward_k{count}"] = plain.wall
        rows.append(row)
    for row in rows:  # the ratios against the fastest forward of this measurement, also in timing.csv
        row.update({f"ratio_k{count}": ratio for count, ratio in speed_ratios(rows, prompts)[row["method"]].items()})
    return rows


def speed_ratios(rows: Sequence[dict[str, Any]], prompts: Sequence[int] = (1, 8)) -> dict[str, dict[int, float]]:
    """Time per (image, prompt) of each method over the time per image of one plain forward, the
    forward's time being its fastest run over all rows (the same reference for every method)."""
    forward = min(float(row[f"forward_k{count}"]) for row in rows for count in prompts if f"forward_k{count}" in row)
    return {str(row["method"]): {count: (float(row[f"seconds_k{count}"]) / (int(row["images"]) * count))
                                 / (forward / int(row["images"]))
                                 for count in prompts if f"seconds_k{count}" in row}
            for row in rows}

