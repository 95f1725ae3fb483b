"""The pointing game's default tolerance in every evaluation: 4 px, the usual 15 px at 224 px scaled to the
synthetic world's 64 px (round(15 * 64 / 224) = 4), exactly as the model card and docs/results.md state.

Each evaluation is run with its default on hand-made maps whose peak lies at a known Euclidean distance
from the target mask (from scipy's distance transform, independent of the package's dilation): a peak at
most 4 px away is a hit, one farther away a miss, and the strict pointing game misses both.
"""

from __future__ import annotations

import csv
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from gradeclip_utils import evaluation as ev
from gradeclip_utils.evaluation import command as eval_command
from gradeclip_utils.evaluation import methods as eval_methods
from gradeclip_utils.cli import alias_main
from gradeclip_utils.synthetic import evaluate as synthetic_evaluate

DEFAULT = round(15 * 64 / 224)


def peak_at_distance(mask: np.ndarray, near: bool) -> np.ndarray:
    """A one-hot map at the pixel farthest from the mask within DEFAULT px (near) or nearest beyond it."""
    distance = distance_transform_edt(~mask)
    if near:
        candidates = np.where(distance <= DEFAULT, distance, -1.0)
        index = np.unravel_index(np.argmax(candidates), mask.shape)
    else:
        candidates = np.where(distance > DEFAULT, distance, np.inf)
        index = np.unravel_index(np.argmin(candidates), mask.shape)
    assert (0 < distance[index] <= DEFAULT) if near else (DEFAULT < distance[index] <= DEFAULT + 1.5)
    peak = np.zeros(mask.shape, dtype=np.float32)
    peak[index] = 1.0
    return peak


class Stop(Exception):
    """Raised by a stand-in to end a command where it hands its settings on."""


def stop(*args, **kwargs):
    raise Stop(*args, kwargs)


@pytest.fixture()
def hand_maps(monkeypatch):
    """item_maps replaced: item i gets a peak within the tolerance when i is even, beyond it when odd."""
    def fake(model, items, **_):
        return torch.stack([torch.from_numpy(peak_at_distance(mask, i % 2 == 0)) for i, (_, _, mask) in enumerate(items)])

    monkeypatch.setattr(synthetic_evaluate, "item_maps", fake)


def test_synthetic_localisation_default(hand_maps):
    result = synthetic_evaluate.localisation_eval(None, n=6)
    assert result["tolerance_px"] == DEFAULT
    assert result["pointing"] == pytest.approx(3 / 6) and result["pointing_strict"] == 0.0


def test_synthetic_evaluate_and_its_command_default(hand_maps, monkeypatch):
    monkeypatch.setattr(synthetic_evaluate, "zero_shot_eval", lambda *a, **k: {})
    monkeypatch.setattr(synthetic_evaluate, "choice_eval", lambda *a, **k: {})
    result = synthetic_evaluate.evaluate(SimpleNamespace(name="stand-in"), n_localisation=4)
    assert result["localisation"]["pointing"] == pytest.approx(0.5)
    monkeypatch.setattr(synthetic_evaluate, "evaluate", stop)
    with pytest.raises(Stop) as stopped:
        alias_main("synthetic evaluate", ["--threads", str(torch.get_num_threads())])
    assert stopped.value.args[4] == DEFAULT  # evaluate(model, n_zero_shot, n_choice, n_localisation, tolerance, layers)


def test_layer_study_default(hand_maps):
    from gradeclip_utils.studies.layers import layer_localisation

    model = SimpleNamespace(adapter=SimpleNamespace(num_image_blocks=1))
    frame = layer_localisation(model, n=4, include_all=False, progress=False)
    assert frame["pointing"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_method_evaluation_and_its_command_default(tmp_path, monkeypatch):
    """evaluate() on a hand-built data set (48 x 48 masks) with the maps replaced; and the command's
    --tolerance default, captured where main() hands it to evaluate()."""
    masks = []
    for i in range(4):
        mask = np.zeros((48, 48), dtype=bool)
        mask[10 + 3 * i:20 + 3 * i, 12:22] = True
        masks.append(mask)

    def item(i):
        return ev.EvalItem(key=f"item-{i}", label=i % 2,
                           load=lambda i=i: (torch.full((3, 48, 48), i / 10), masks[i]))

    data = ev.EvalSet("hand", [item(i) for i in range(4)], ["a", "b"], torch.eye(2, 8), True)

    def fake_maps(model, name, pixels, labels, classifier, options):
        index = [round(float(p[0, 0, 0]) * 10) for p in pixels]
        return torch.stack([torch.from_numpy(peak_at_distance(masks[i], i % 2 == 0)) for i in index])

    monkeypatch.setattr(eval_methods, "batch_maps", fake_maps)
    monkeypatch.setattr(eval_methods, "unsupported_methods", lambda model, options: {})  # a stand-in: nothing to try on
    model = SimpleNamespace(describe=lambda: {"name": "stand-in"}, model=torch.nn.Linear(1, 1), device=torch.device("cpu"),
                            adapter=SimpleNamespace(logit_scale=100.0),
                            normalization=((0.5,) * 3, (0.5,) * 3))
    ev.evaluate(model, data, tmp_path, methods=["grad_eclip"], faithfulness=False, sanity_images=0, timing_images=0,
                progress=False)
    rows = {row["key"]: row for row in csv.DictReader(open(tmp_path / "per_image.csv"))}
    assert [float(rows[f"item-{i}"]["pointing"]) for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
    assert all(float(row["pointing_strict"]) == 0.0 for row in rows.values())
    assert json.loads((tmp_path / "config.json").read_text())["tolerance"] == DEFAULT

    monkeypatch.setattr("gradeclip_utils.loading.load_model", lambda *a, **k: model)
    monkeypatch.setattr(eval_command, "synthetic_set", lambda *a, **k: data)
    monkeypatch.setattr(eval_command, "evaluate", stop)
    with pytest.raises(Stop) as stopped:
        alias_main("evaluate", ["--out", str(tmp_path / "cli")])
    assert stopped.value.args[-1]["config"].tolerance == DEFAULT


def test_caption_choice_study_default():
    """run_choices explains real captions (covered in test_studies.py); its declared default is the same."""
    from gradeclip_utils.studies.failures import run_choices

    assert inspect.signature(run_choices).parameters["tolerance"].default == DEFAULT
