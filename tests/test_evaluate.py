"""The evaluation command: data sets, resumable runs, the written tables and plots, and the
pointing-game claim on the embedded synthetic model."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import distance_transform_edt

import reference
from spread import assert_within_spread

import gradeclip_utils as ge
from gradeclip_utils import evaluation as ev
from gradeclip_utils import stats
from gradeclip_utils.evaluation import methods as eval_methods
from gradeclip_utils.evaluation.runner import _batches
from gradeclip_utils.methods.clip_surgery import AUTHORS_CLASS_SET
from gradeclip_utils.records import weights_digest
from gradeclip_utils.metrics import AUC_DEFINITION, shrink_to_640

FAST = dict(batch_size=4, rise_masks=16, m2ib_steps=1, m2ib_samples=1, timing_images=1, timing_repeats=1,
            progress=False)


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bootstrap_and_paired_difference_hand_values():
    assert stats.bootstrap_ci(np.array([0.25, 0.25, 0.25])) == (0.25, 0.25, 0.25)
    mean, low, high = stats.bootstrap_ci(np.array([0.0, 1.0, np.nan, 1.0, 0.0]))
    assert mean == 0.5 and 0.0 <= low < 0.5 < high <= 1.0
    assert stats.paired_difference(np.array([1.0, 1.0]), np.array([0.0, 1.0]))[0] == 0.5


def test_bootstrap_interval_is_the_95_percent_one():
    """400 hits and misses, half each: the 95% percentile-bootstrap interval of the mean is, to Monte-Carlo
    error (20,000 resamples: about 0.0005), the normal one 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049
    (a 90% interval would be +- 0.041)."""
    values = np.tile([0.0, 1.0], 200)
    mean, low, high = stats.bootstrap_ci(values, resamples=20_000)
    assert mean == 0.5
    half = 1.96 * math.sqrt(0.25 / 400)
    assert low == pytest.approx(0.5 - half, abs=0.002) and high == pytest.approx(0.5 + half, abs=0.002)
    mean, low, high = stats.paired_difference(values, np.zeros(400), resamples=20_000)
    assert low == pytest.approx(0.5 - half, abs=0.002) and high == pytest.approx(0.5 + half, abs=0.002)


@pytest.mark.parametrize("settings, message", [
    ({"protocol": "paper"}, r"protocol must be one of \('project', 'authors'\), got 'paper'"),
    ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ({"tie_seeds": 0}, "tie_seeds must be at least 1, got 0"),
    ({"sanity_images": -1}, "sanity_images must be at least 0, got -1"),
    ({"rise_masks": 2.5}, "rise_masks must be a whole number, got 2.5"),
    ({"m2ib_steps": True}, "m2ib_steps must be a whole number, got True"),
    ({"tolerance": -1.0}, "tolerance must be a number of at least 0, got -1.0"),
    ({"timing_budget": float("nan")}, "timing_budget must be a number of at least 0"),
    ({"faithfulness": 1}, "faithfulness must be True or False, got 1"),
    ({"methods": "grad_eclip"}, "methods must be None or a list of method names, got 'grad_eclip'"),
    ({"sanity_methods": ["grad_eclip", "nope"]}, r"unknown methods \['nope'\]; available: .*'random'\]"),
    ({"score": "banana"}, r"score must be one of \('cosine', 'logit', 'probability'\), got 'banana'"),
    ({"score": "contrast"}, "cannot explain score='contrast': .* needs a second class b per image"),
    ({"score": "probability", "protocol": "authors"}, "score='probability' does not fit protocol='authors'"),
])
def test_settings_are_checked_once_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        ev.EvalConfig(**settings)


def test_a_bad_setting_is_refused_before_any_work(tmp_path):
    """evaluate() checks its settings before it touches the model or the folder."""
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ev.evaluate(None, None, tmp_path / "run", batch_size=0)
    with pytest.raises(TypeError, match=r"unknown evaluation settings \['rise_mask'\]"):
        ev.evaluate(None, None, tmp_path / "run", rise_mask=10)
    assert not (tmp_path / "run").exists()


def test_config_json_records_the_settings_as_before():
    """The keys (in the order the first runs wrote them) and values of a run's config.json; timing_budget only
    away from its default, one tie seed under the authors' protocol; the run's own choices are not recorded."""
    config = ev.EvalConfig(methods=["grad_eclip"], rise_masks=300, tie_seeds=2, command="x", workers=2)
    record = config.to_json(dataset="synthetic", provenance={"model": {"name": "m"}, "weights": "w"}, classes=35)
    assert list(record) == ["dataset", "model", "weights", "tolerance", "batch_size", "rise_masks", "rise_centre",
                            "m2ib_steps", "m2ib_samples", "seed", "faithfulness", "classes", "sanity_images",
                            "timing_images", "timing_repeats", "protocol", "tie_seeds"]
    assert record["rise_masks"] == 300 and record["tie_seeds"] == 2 and record["classes"] == 35
    assert config.methods == ("grad_eclip",)
    assert ev.EvalConfig(timing_budget=0.2).settings()["timing_budget"] == 0.2
    assert ev.EvalConfig(protocol="authors", tie_seeds=3).tie_seeds == 1
    assert "score" not in record and ev.EvalConfig().score == "cosine"
    scored = ev.EvalConfig(methods=["grad_eclip"], rise_masks=300, tie_seeds=2, score="probability").to_json(
        dataset="synthetic", provenance={"model": {"name": "m"}, "weights": "w"}, classes=35)
    assert list(scored) == list(record) + ["score"] and scored["score"] == "probability"


def test_speed_ratios_hand_values():
    rows = [{"method": "a", "images": 4, "forward_k1": 0.2, "forward_k8": 0.3, "seconds_k1": 0.4, "seconds_k8": 0.8},
            {"method": "b", "images": 4, "forward_k1": 0.1, "forward_k8": 0.2, "seconds_k1": 0.1, "seconds_k8": 0.4}]
    ratios = ev.speed_ratios(rows)  # the common forward: 0.1 s for 4 images (0.025 s per image)
    assert ratios["a"] == pytest.approx({1: 4.0, 8: 1.0}) and ratios["b"] == pytest.approx({1: 1.0, 8: 0.5})


def test_synthetic_run_writes_tables_and_resumes(tiny, tmp_path, monkeypatch):
    data = ev.synthetic_set(tiny, 5)
    assert len(data.items) == 5 and data.classifier.shape == (35, tiny.adapter.embed_dim)
    pixels, mask = data.items[0].load()
    assert pixels.shape == (3, 48, 48) and mask.shape == (48, 48) and mask.any()
    summary = ev.evaluate(tiny, data, tmp_path, sanity_images=2, sanity_methods=["grad_eclip", "rise"], **FAST)
    rows = read(tmp_path / "per_image.csv")
    assert len(rows) == 5 * len(ev.DEFAULT_METHODS)
    assert {r["method"] for r in rows} == set(ev.DEFAULT_METHODS)
    check_localisation_rows(tiny, data, [row for row in rows if row["method"] == "grad_eclip"])
    for row in rows:
        auc = np.mean([float(row[f"deletion_score_{t:02d}"]) for t in range(11)][1:-1])
        ends = (float(row["deletion_score_00"]) + float(row["deletion_score_10"])) / 2
        assert float(row["deletion_auc_score"]) == pytest.approx((9 * auc + ends) / 10, abs=1e-6)
    text = (tmp_path / "summary.md").read_text()
    assert AUC_DEFINITION in text and "| grad_eclip |" in text and "Cascading randomisation" in text
    for name in ("curves_deletion.png", "curves_insertion.png", "auc_bars.png", "sanity.png"):
        assert (tmp_path / name).stat().st_size > 1000
    timing = read(tmp_path / "timing.csv")
    assert {r["method"] for r in timing} == set(ev.DEFAULT_METHODS)
    # the documented ratio: seconds per (image, prompt) over seconds per image of the fastest plain forward
    forward = min(float(r[f"forward_k{k}"]) for r in timing for k in (1, 8)) / 4
    for r in timing:
        for k in (1, 8):
            assert float(r[f"ratio_k{k}"]) == pytest.approx(float(r[f"seconds_k{k}"]) / (4 * k) / forward, rel=1e-3)  # the CSV keeps 7 decimals
    for name in ev.DEFAULT_METHODS:  # the table's cells are the per-image means, inside their intervals
        for column in ("pointing", "energy", "deletion_auc_score"):
            mean, low, high = summary["table"][name][column]
            assert mean == pytest.approx(np.mean([float(r[column]) for r in rows if r["method"] == name]))
            assert low <= mean <= high
    assert summary["claims"]
    doc = ev.write_doc(summary, tmp_path, tmp_path / "docs" / "results.md")
    assert "![auc bars](results/auc_bars.png)" in doc.read_text() and (tmp_path / "docs/results/sanity.png").is_file()

    calls = []
    original = ev.run_method
    monkeypatch.setattr(eval_methods, "run_method", lambda *a, **k: calls.append(a[1]) or original(*a, **k))
    ev.evaluate(tiny, data, tmp_path, sanity_images=2, sanity_methods=["grad_eclip", "rise"], **FAST)
    assert calls == [], "a finished run was recomputed"
    more = ev.synthetic_set(tiny, 7)
    ev.evaluate(tiny, more, tmp_path, methods=["grad_eclip"], sanity_images=2, sanity_methods=[], **FAST)
    assert len(read(tmp_path / "per_image.csv")) == 5 * len(ev.DEFAULT_METHODS) + 2
    with pytest.raises(ValueError, match="other settings"):
        ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip"], **{**FAST, "rise_masks": 17})
    # the same model name with other weights (e.g. a retrained model) is other settings too
    param = next(tiny.model.parameters())
    kept, digest = param.detach().clone(), weights_digest(tiny.model)
    with torch.no_grad():
        param.view(-1)[0] += 1.0
    try:
        assert weights_digest(tiny.model) != digest
        with pytest.raises(ValueError, match="other settings"):
            ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip"], **FAST)
    finally:
        with torch.no_grad():
            param.copy_(kept)
    assert weights_digest(tiny.model) == digest
    ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip"], sanity_images=0, overwrite=True, **FAST)
    assert len(read(tmp_path / "per_image.csv")) == 5


def check_localisation_rows(model, data, rows):
    """Each row's localisation figures against the literal Grad-ECLIP map (tests/reference.py) of its
    image and target, upsampled bilinearly, and the metrics written out: a maximum within 4 px
    (scipy's distance transform) or inside the mask, the positive mass inside, the IoU of map > mean."""
    items = {item.key: item for item in data.items}
    assert len(rows) == len(items)
    for row in rows:
        item = items[row["key"]]
        pixels, mask = item.load()
        maps, _ = reference.image_maps(model.model, pixels[None], data.classifier[item.label][None],
                                       [model.adapter.num_image_blocks - 1])
        up = F.interpolate(maps.double(), size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        peaks = (up == up.max()) & (up.max() > up.min())
        distance = distance_transform_edt(~mask)
        positive = np.clip(up, 0, None)
        binary = up > up.mean()
        expected = {"pointing": float((distance[peaks] <= 4).any()), "pointing_strict": float(mask[peaks].any()),
                    "energy": positive[mask].sum() / positive.sum(), "iou": (binary & mask).sum() / (binary | mask).sum(),
                    "area_share": mask.mean()}
        for name, value in expected.items():
            assert float(row[name]) == pytest.approx(value, abs=1e-6), (row["key"], name)


@pytest.mark.parametrize("method", ["grad_eclip", "m2ib"])
def test_batch_maps_give_each_image_its_own_target(tiny, method):
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    classes = torch.nn.functional.normalize(torch.randn(4, tiny.adapter.embed_dim), dim=-1)
    # one M2IB step: the map is the capacity before any update, so it does not depend on the noise draws
    options = {"steps": 1, "samples": 1} if method == "m2ib" else {}
    maps = ev.batch_maps(tiny, method, pixels, [2, 0, 2], classes, options)
    for b, label in enumerate([2, 0, 2]):
        alone = ev.run_method(tiny, method, pixels[b:b + 1], classes[label:label + 1], options)[0, 0]
        assert torch.allclose(maps[b], alone, atol=1e-5)


@pytest.mark.parametrize("method, options", [("grad_eclip", {}), ("grad_cam", {}), ("rise", {"masks": 16}),
                                             ("m2ib", {"steps": 2, "samples": 2, "beta": 1e-4})])
def test_batch_maps_of_the_probability_take_every_class(tiny, method, options):
    """With score="probability" each image's map is its class's column of explain_image(..., score="probability")
    against the whole classifier (the softmax over every class, not over the batch's classes), M2IB's paired
    mode included (with a small beta, so that the fit term, not the capacity alone, shapes its map)."""
    pixels = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    classes = F.normalize(torch.randn(5, tiny.adapter.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1)
    maps = ev.batch_maps(tiny, method, pixels, [2, 0, 2], classes, {**options, "score": "probability"})
    whole = ge.explain_image(tiny, pixels, classes, method=method, score="probability", **options)
    for b, label in enumerate([2, 0, 2]):
        want = whole.raw[b][label]
        assert torch.allclose(maps[b], want, rtol=0, atol=1e-5 * float(want.abs().max())), (method, b)
    among_batch = ge.explain_image(tiny, pixels[:1], classes[[0, 2]], method=method, score="probability", **options)
    assert not torch.allclose(among_batch.raw[0][1], maps[0], rtol=0, atol=1e-3 * float(maps[0].abs().max()))


def test_a_probability_run_explains_each_class_among_all_classes(tiny, tmp_path, monkeypatch):
    """evaluate(score="probability"): the maps scored are explain_image(..., score="probability") against the
    whole classifier, each image's class's column (the sanity check's too); config.json records the score (its
    keys are a default run's and "score"), the curves report the explained probability, the summary says what
    the maps explain, the methods that cannot explain it are left out and named (refused when asked for by
    name), and a run resumes only with the same score."""
    data = ev.synthetic_set(tiny, 5)
    seen, calls = [], []
    original, run_method = eval_methods.batch_maps, eval_methods.run_method
    monkeypatch.setattr(eval_methods, "batch_maps",
                        lambda model, name, pixels, labels, *a, **k: seen.append((name, pixels, list(labels), out := (
                            original(model, name, pixels, labels, *a, **k)))) or out)
    monkeypatch.setattr(eval_methods, "run_method",
                        lambda *a, **k: calls.append((a[1], a[3].shape[0], a[4].get("columns")))
                        or run_method(*a, **k))
    options = dict(FAST, timing_images=0, sanity_images=2, sanity_methods=["grad_eclip"])
    ev.evaluate(tiny, data, tmp_path / "p", score="probability", methods=["grad_eclip", "m2ib", "random"], **options)
    assert {name for name, *_ in seen} == {"grad_eclip", "m2ib", "random"}
    for name, pixels, labels, maps in seen:
        if name == "random":
            continue
        method_options = {"steps": 1, "samples": 1, "seed": 0} if name == "m2ib" else {}
        whole = ge.explain_image(tiny, pixels, data.classifier, method=name, score="probability", **method_options)
        for b, label in enumerate(labels):
            want = whole.raw[b][label]
            assert torch.allclose(maps[b], want, rtol=0, atol=1e-5 * float(want.abs().max())), (name, b)
    # every map of a class, the sanity check's too, is a column of the whole classifier (not the random floor's)
    assert sum(name == "grad_eclip" for name, *_ in calls) > sum(name == "grad_eclip" for name, *_ in seen)
    for name, rows, columns in calls:
        assert columns is None if name == "random" else (rows == 35 and columns is not None), (name, rows, columns)
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["score"] == "probability" and "not_run" not in config
    rows = read(tmp_path / "p" / "per_image.csv")
    assert "deletion_auc_probability" in rows[0] and "insertion_probability_10" in rows[0]
    assert not any("logit" in column for column in rows[0])
    summary = (tmp_path / "p" / "summary.md").read_text()
    assert "the maps explain the probability of each image's class among every class" in summary
    assert "deletion AUC, probability (explained; lower better)" in summary

    ev.evaluate(tiny, data, tmp_path / "default", methods=["grad_eclip"], **options)
    default = json.loads((tmp_path / "default" / "config.json").read_text())
    assert "score" not in default and [k for k in config if k != "score"] == list(default)
    for score in ("logit", "cosine"):
        with pytest.raises(ValueError, match="other settings"):
            ev.evaluate(tiny, data, tmp_path / "p", score=score, methods=["grad_eclip", "m2ib", "random"], **options)
    with pytest.raises(ge.UnsupportedMethodError, match="raw_attention does not use the setting score"):
        ev.evaluate(tiny, data, tmp_path / "named", score="logit", methods=["grad_eclip", "raw_attention"], **options)
    assert not (tmp_path / "named" / "config.json").exists()


def test_a_logit_run_reports_the_logit_curves(tiny, tmp_path):
    """evaluate(score="logit"): the curves of the explained logit, named *_logit, are the logit scale x the
    cosine's ("score"); the default columns stay as they are; the methods that cannot explain it are named in
    config.json and the summary."""
    data = ev.synthetic_set(tiny, 4)
    ev.evaluate(tiny, data, tmp_path, score="logit", sanity_images=0, **{**FAST, "timing_images": 0})
    scale = tiny.adapter.logit_scale
    rows = read(tmp_path / "per_image.csv")
    default_columns = ev.runner.per_image_columns(localise=True, faithfulness=True, tie_seeds=3)
    columns = list(rows[0])
    assert [c for c in columns if "logit" not in c] == default_columns
    for row in rows:
        for kind in ("deletion", "insertion"):
            assert float(row[f"{kind}_auc_logit"]) == pytest.approx(scale * float(row[f"{kind}_auc_score"]),
                                                                    rel=1e-5, abs=1e-5)
            for t in range(11):
                assert float(row[f"{kind}_logit_{t:02d}"]) == pytest.approx(scale * float(row[f"{kind}_score_{t:02d}"]),
                                                                            rel=1e-5, abs=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["score"] == "logit" and "raw_attention" in config["not_run"]
    assert {row["method"] for row in rows} == set(ev.DEFAULT_METHODS) - set(config["not_run"])
    summary = (tmp_path / "summary.md").read_text()
    assert "cannot explain the logit): raw_attention does not use the setting score" in summary
    assert "insertion AUC, logit (explained; higher better)" in summary


def test_the_command_passes_the_score():
    """evaluate --score reaches EvalConfig; a score the evaluation does not take is a usage error."""
    from gradeclip_utils import cli
    from gradeclip_utils.evaluation.command import config_from_args

    parser = cli.command_parser("evaluate")
    config = config_from_args(parser, parser.parse_args(["--score", "probability"]), [], torch.device("cpu"))
    assert config.score == "probability"
    assert config_from_args(parser, parser.parse_args([]), [], torch.device("cpu")).score == "cosine"
    with pytest.raises(SystemExit):
        parser.parse_args(["--score", "contrast"])


def test_random_reference_is_seeded_by_item(tiny):
    pixels = torch.randn(2, 3, 48, 48)
    targets = torch.nn.functional.normalize(torch.randn(1, tiny.adapter.embed_dim), dim=-1)
    a = ev.random_maps(tiny.adapter, pixels, targets, keys=["x", "y"]).maps
    b = ev.random_maps(tiny.adapter, pixels[:1], targets, keys=["x"]).maps
    assert torch.equal(a[:1], b) and not torch.equal(a[0], a[1])


def test_random_reference_does_not_depend_on_the_batch(tiny):
    """An item's random map is the same whatever batch it is evaluated in: batch_maps explains a batch
    against its distinct targets, so the map must not depend on how many there are or where the
    item's own target sits among them (it did: the published random row moved with --batch-size)."""
    generator = torch.Generator().manual_seed(2)
    pixels = torch.randn(3, 3, 48, 48, generator=generator)
    classes = torch.nn.functional.normalize(torch.randn(4, tiny.adapter.embed_dim, generator=generator), dim=-1)
    keys, labels = ["a", "b", "c"], [3, 0, 2]
    together = ev.batch_maps(tiny, "random", pixels, labels, classes, {"seed": 0, "keys": keys})
    for i in range(3):
        alone = ev.batch_maps(tiny, "random", pixels[i:i + 1], labels[i:i + 1], classes, {"seed": 0, "keys": keys[i:i + 1]})
        assert torch.equal(together[i], alone[0]), keys[i]
    expected = torch.rand(6, 6, generator=torch.Generator().manual_seed(ev.item_seed(0, "b")))
    assert torch.equal(together[1], expected)


def test_folder_of_images_with_prompts_and_masks(tiny, tmp_path):
    rng = np.random.default_rng(0)
    with open(tmp_path / "prompts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt", "mask"])
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
            mask = np.zeros((60, 80), dtype=np.uint8)
            mask[10:30, 40:70] = 255
            Image.fromarray(mask).save(tmp_path / f"m{i}.png")
            writer.writerow([f"im{i}.png", ["a cat", "a dog"][i % 2], f"m{i}.png"])
    data = ev.folder_set(tiny, tmp_path / "prompts.csv")
    assert data.class_names == ["a cat", "a dog"] and data.has_masks
    pixels, mask = data.items[0].load()
    # the model's preprocessing: shortest side to 48 (60 x 80 -> 48 x 64), centre crop 48 x 48 (columns 8..56)
    expected = np.zeros((48, 48), dtype=bool)
    expected[8:24, 24:48] = True
    assert pixels.shape == (3, 48, 48) and np.array_equal(mask, expected)
    ev.evaluate(tiny, data, tmp_path / "out", methods=["grad_eclip", "itsm"], sanity_images=0, **FAST)
    rows = read(tmp_path / "out" / "per_image.csv")
    assert len(rows) == 6 and "energy" in rows[0] and "insertion_auc_score" in rows[0]
    # the same run configured by one EvalConfig writes the same rows and settings
    config = ev.EvalConfig(methods=["grad_eclip", "itsm"], sanity_images=0, **FAST)
    ev.evaluate(tiny, data, tmp_path / "same", config)
    assert read(tmp_path / "same" / "per_image.csv") == rows
    assert (tmp_path / "same" / "config.json").read_text() == (tmp_path / "out" / "config.json").read_text()
    Image.fromarray(np.zeros((60, 81), dtype=np.uint8)).save(tmp_path / "m1.png")   # one column too many
    with pytest.raises(ValueError, match="m1.png and image im1.png differ in size"):
        ev.folder_set(tiny, tmp_path / "prompts.csv").items[1].load()


def class_folders(root, per_class: int, size: tuple[int, int], suffix: str, seed: int):
    """An ImageNet-style folder of two classes (ImageNet's wnid-like names), random pictures in each."""
    rng = np.random.default_rng(seed)
    for name in ("golden_retriever", "tabby_cat"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}{suffix}")
    return root


def test_class_folders_build_a_template_classifier(tiny, tmp_path):
    class_folders(tmp_path / "val", 2, (50, 50), ".jpg", seed=1)
    data = ev.imagenet_set(tiny, tmp_path / "val", 3, templates="simple", cache=tmp_path / "classifier.pt")
    assert data.class_names == ["golden retriever", "tabby cat"] and not data.has_masks
    assert [item.label for item in data.items] == [0, 1, 0]  # round-robin over the classes
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    with torch.no_grad():
        texts = [t("golden retriever") for t in SIMPLE_IMAGENET_TEMPLATES]
        expected = torch.nn.functional.normalize(tiny.model.encode_text(tiny.tokenize(texts)), dim=-1).mean(0)
    assert torch.allclose(data.classifier[0], torch.nn.functional.normalize(expected, dim=0), atol=1e-5)
    again = ev.imagenet_set(tiny, tmp_path / "val", 3, templates="simple", cache=tmp_path / "classifier.pt")
    assert torch.allclose(again.classifier, data.classifier)
    ev.evaluate(tiny, data, tmp_path / "out", methods=["grad_eclip"], sanity_images=0, **FAST)
    rows = read(tmp_path / "out" / "per_image.csv")
    assert len(rows) == 3 and "pointing" not in rows[0]


def test_grad_eclip_points_better_than_raw_attention_and_random_on_the_synthetic_model(tmp_path):
    """The comparison's central claim, on the committed synthetic model and 100 fresh held-out scenes
    (a block of ids apart from the committed table's): Grad-ECLIP's pointing game beats raw
    self-attention's and a random map's. It can fail: it is a measurement, not a tuned threshold."""
    from gradeclip_utils import load_model
    from gradeclip_utils.synthetic.evaluate import OFFSETS

    model = load_model("synthetic", device="cpu")
    data = ev.synthetic_set(model, 100, offset=OFFSETS["ci_localisation"] + 50_000)
    summary = ev.evaluate(model, data, tmp_path, methods=["grad_eclip", "raw_attention", "random"], batch_size=32,
                          faithfulness=False, sanity_images=0, timing_images=0, progress=False)
    pointing = {name: summary["table"][name]["pointing"][0] for name in ("grad_eclip", "raw_attention", "random")}
    assert pointing["grad_eclip"] > pointing["raw_attention"], pointing
    assert pointing["grad_eclip"] > pointing["random"], pointing


def test_target_pred_explains_the_prediction_and_scores_the_ground_truth(tiny, tmp_path):
    class_folders(tmp_path / "val", 3, (50, 60), ".png", seed=3)
    data = ev.imagenet_set(tiny, tmp_path / "val", 6, templates="simple", target="pred")
    # predicted when first asked for (under torchrun, by the rank that explains the item), not up front
    assert all(callable(item.target) for item in data.items)
    assert [len(b) for b in _batches(data.items, 4)] == [4, 2] and all(callable(i.target) for i in data.items)
    with torch.no_grad():
        pixels = torch.stack([item.load()[0] for item in data.items])
        embedding = torch.nn.functional.normalize(tiny.model.encode_image(pixels), dim=-1)
    predicted = (embedding @ data.classifier.T).argmax(dim=-1).tolist()
    assert [item.label for item in data.items] == [0, 1, 0, 1, 0, 1]  # the ground truth
    assert [item.explained for item in data.items] == predicted
    assert any(p != item.label for p, item in zip(predicted, data.items))  # the two differ somewhere
    ev.evaluate(tiny, data, tmp_path / "out", methods=["grad_eclip"], sanity_images=0, tie_seeds=2, **FAST)
    rows = {row["key"]: row for row in read(tmp_path / "out" / "per_image.csv")}
    for item, p in zip(data.items, predicted):
        row = rows[item.key]
        assert int(row["target"]) == p and int(row["label"]) == item.label
        # deletion's first point is the unchanged image: top-1 is right only where the prediction is the truth
        assert float(row["deletion_accuracy_00"]) == float(p == item.label)
        assert "deletion_auc_score_tie1" in row


def test_authors_protocol_runs_their_presets(tiny, tmp_path, monkeypatch):
    data = ev.synthetic_set(tiny, 3)
    calls = []
    original = ev.run_method
    monkeypatch.setattr(eval_methods, "run_method", lambda m, name, pixels, targets, options: calls.append(
        (name, tuple(pixels.shape[-2:]), dict(options))) or original(m, name, pixels, targets, options))
    summary = ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip", "raw_attention", "game_last"],
                          sanity_images=0, protocol="authors", **{**FAST, "timing_images": 0})
    rows = read(tmp_path / "per_image.csv")
    assert len(rows) == 9 and "pointing" not in rows[0] and "deletion_auc_score_tie1" not in rows[0]
    seen = {name: options for name, _, options in calls}
    assert seen["grad_eclip"]["mode"] == "official" and seen["grad_eclip"]["qk"] == "out_proj"
    assert seen["raw_attention"]["variant"] == "authors"
    # the synthetic pictures are 64 x 64: native resolution at 64 rounds to the 8-pixel patches, the centre crop is 48
    shapes = {name: shape for name, shape, _ in calls}
    assert shapes["grad_eclip"] == (64, 64) and shapes["game_last"] == (48, 48)
    text = summary["markdown"]
    assert "authors' deletion and insertion scripts exactly" in text and "insertion top-1 % at 5" in text
    # insertion is scored at 5% ... 50% and on the whole picture, and plotted there
    assert summary["fractions"]["insertion"] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 1.0]
    assert summary["fractions"]["deletion"] == [round(0.05 * t, 2) for t in range(11)]
    import matplotlib.pyplot as plt

    drawn, plot = [], plt.Axes.plot
    monkeypatch.setattr(plt.Axes, "plot", lambda self, x, *a, **k: drawn.append(list(x)) or plot(self, x, *a, **k))
    ev.plot_results(tmp_path, summary)
    assert [100.0 * f for f in summary["fractions"]["insertion"]] in [[round(v, 6) for v in x] for x in drawn]
    with pytest.raises(ValueError, match="protocol must be one of"):
        ev.evaluate(tiny, data, tmp_path / "x", methods=["grad_eclip"], protocol="paper", **FAST)


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
#: the published columns this test recomputes: table title -> per_image.csv column, whether it is a share of
#: hits (binomial standard error) or a mean of per-image values (their sample standard error)
PUBLISHED_COLUMNS = {"pointing game % (tol. 4 px)": ("pointing", True), "pointing game % (strict)": ("pointing_strict", True),
                     "energy PG %": ("energy", False), "IoU (map > mean) %": ("iou", False),
                     "deletion AUC, score (lower better)": ("deletion_auc_score", False),
                     "insertion AUC, score (higher better)": ("insertion_auc_score", False)}
#: every method of the published table but the two slow ones (RISE, M2IB: minutes on two cores)
PUBLISHED_METHODS = ("grad_eclip", "grad_eclip_no_spatial", "raw_attention", "rollout", "grad_cam", "game",
                     "game_last", "maskclip", "clip_surgery", "itsm", "legrad", "random")


def published_table():
    """docs/results.md's method table: method -> {column title: published mean (as in the cells)}, and n."""
    text = RESULTS.read_text()
    n = int(re.search(r"Items: (\d+)\.", text)[1])
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == len(header) and cells[0] in DEFAULT_METHOD_NAMES:
            table[cells[0]] = {title: float(cell.split(" ")[0]) for title, cell in zip(header[1:], cells[1:])
                               if title in PUBLISHED_COLUMNS}
    return table, n


DEFAULT_METHOD_NAMES = set(ev.DEFAULT_METHODS)


def test_published_method_table_is_reproduced(tmp_path):
    """docs/results.md's cells, recomputed on the same held-out scenes (as many as the page's "Items")
    with the committed synthetic model, within three standard errors of the published means: binomial
    for the pointing games (Agresti-Coull estimate, so that 0% or 100% still get a band), the per-image
    sample standard error for energy, IoU and the AUCs; plus the cell's rounding. Localisation for every
    method but RISE and M2IB (minutes on two cores), faithfulness (22 perturbed pictures per image) for
    Grad-ECLIP only; the sanity check and the timings are not recomputed."""
    from gradeclip_utils import load_model

    table, n = published_table()
    assert set(PUBLISHED_METHODS) <= set(table), sorted(table)
    model = load_model("synthetic", device="cpu")
    data = ev.synthetic_set(model, n)  # the command's own scenes (its default offset)
    runs = {"localisation": (PUBLISHED_METHODS, False), "faithfulness": (("grad_eclip",), True)}
    off = []
    for run, (methods, faithfulness) in runs.items():
        ev.evaluate(model, data, tmp_path / run, methods=methods, batch_size=50, faithfulness=faithfulness,
                    sanity_images=0, timing_images=0, progress=False)
        rows = read(tmp_path / run / "per_image.csv")
        for method in methods:
            for title, (column, binomial) in PUBLISHED_COLUMNS.items():
                if ("AUC" in title) != faithfulness:
                    continue
                values = np.array([float(r[column]) for r in rows if r["method"] == method])
                assert values.size == n
                published = table[method][title] / (100 if "%" in title else 1)
                if binomial:
                    p = (published * n + 2) / (n + 4)
                    se = math.sqrt(p * (1 - p) / n)
                else:
                    se = values.std(ddof=1) / math.sqrt(n)
                band = 3 * se + 0.0005  # the cell's rounding: 0.1 points, or 0.001 for an AUC
                if abs(values.mean() - published) > band:
                    off.append(f"{method} {title}: {values.mean():.4f} against the published {published:.4f} "
                               f"(3 SE = {band:.4f})")
    assert not off, "\n".join(off)


def test_authors_protocol_explains_what_their_scripts_explain(tiny, tmp_path, monkeypatch):
    """GAME, rollout and M2IB against the bare class name (``tokenize(IMAGENET_CLASSNAMES[c])``), CLIP
    Surgery against the class name and its 59 names, each with CLIP Surgery's prompt ensemble, the target
    first; Grad-ECLIP against the classifier's row. Embeddings recomputed here one text at a time."""
    import torch.nn.functional as F

    from gradeclip_utils.methods.clip_surgery import SURGERY_TEMPLATES

    import dataclasses

    from gradeclip_utils.prompts import zero_shot_classifier

    data = ev.synthetic_set(tiny, 2)
    # a classifier of templates (as ImageNet's), so that its rows are not the bare names' embeddings
    data = dataclasses.replace(data, classifier=zero_shot_classifier(tiny, data.class_names,
                                                                     ["a photo of {}.", "art of {}"], progress=False))
    calls = []
    original = ev.run_method
    monkeypatch.setattr(eval_methods, "run_method", lambda m, name, pixels, targets, options: calls.append(
        (name, targets.clone(), dict(options))) or original(m, name, pixels, targets, options))
    ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip", "game_last", "m2ib", "clip_surgery"], sanity_images=0,
                protocol="authors", **{**FAST, "timing_images": 0})
    calls = calls[-8:]  # after the support probes: 2 items x 4 methods

    def embed(text):
        return F.normalize(tiny.adapter.encode_text(tiny.tokenize([text])).float(), dim=-1)[0]

    def ensemble(name):
        rows = torch.stack([embed(t.format(name)) for t in SURGERY_TEMPLATES])
        return F.normalize(rows.mean(dim=0), dim=-1)

    for b, item in enumerate(data.items):
        name = data.class_names[item.explained]
        assert float((data.classifier[item.explained] - embed(name)).abs().max()) > 1e-3  # tells them apart
        got = {method: (targets, options) for method, targets, options in calls[b::2]}  # item b's calls
        assert torch.allclose(got["grad_eclip"][0][0], data.classifier[item.explained], atol=1e-6)
        for method in ("game_last", "m2ib"):
            assert torch.allclose(got[method][0][0], embed(name), atol=1e-5)
        targets, options = got["clip_surgery"]
        assert torch.allclose(targets[0], ensemble(name), atol=1e-5)
        surgery_set = options["surgery_targets"]
        assert surgery_set.shape[0] == 1 + len(AUTHORS_CLASS_SET) == 60
        assert torch.allclose(surgery_set[0], ensemble(name), atol=1e-5)
        assert torch.allclose(surgery_set[23], ensemble("dog"), atol=1e-5)  # 'dog' is the 23rd of their names


def test_authors_maps_explain_the_shrunk_picture_at_its_full_native_size(tiny, monkeypatch):
    """The authors shrink a picture to a 640 short side and explain it at native size, with no cap on the
    patches (the package's default cap of 1600 would downscale a 640 x 880 picture)."""
    from PIL import Image

    picture = shrink_to_640(Image.new("RGB", (1100, 800), (120, 30, 200)))
    assert picture.size == (880, 640)
    shapes = []
    monkeypatch.setattr(eval_methods, "batch_maps", lambda model, name, pixels, *a, **k: shapes.append(tuple(pixels.shape[-2:]))
                        or torch.zeros(1, pixels.shape[-2] // 8, pixels.shape[-1] // 8))
    item = ev.EvalItem(key="big", label=0, load=lambda: (None, None))
    heat = ev.authors_maps(tiny, "grad_eclip", item, picture, torch.eye(1, 32), {})
    assert shapes == [(640, 880)] and heat.shape == (640, 880)


PUBLISHED_RUN = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_published_per_image_results_are_reproduced_for_every_method(tmp_path):
    """docs/results/per_image.csv (the run behind docs/results.md) recomputed for every method, RISE and M2IB
    included, on the published run's first batch (items sorted by class, cut every batch size: the same images
    in the same batch) with the run's own settings (docs/results/config.json): every per-image value,
    curves and tie seeds included, within what the CPU it runs on can change.

    What that is was measured (docs/results/cpu_spread.json, by scripts/cpu_spread.py; docs/reproducibility.md:
    the whole published run under ATen's default, AVX2 and AVX-512
    kernels, oneDNN capped at AVX2, MKL at AVX2 and in its compatible mode, 1 and 2 threads, batch sizes 5 and
    32). Float noise moves a value by at most a few 1e-6 (all but about 1 in 10,000 values below
    3e-6): every value must agree to the measurement's rounding, 1e-5. Where two pixels' map values are nearly
    tied, another CPU's rounding can order them the other way, and a deletion or insertion curve then takes
    another step: the worst configuration moved that way 1 (image, method) pair in 140, by at most 9e-4 of an
    AUC (5.6e-3 for RISE, whose centred map is a difference of two sums over its masks, near-equal almost
    everywhere). So a pair may move more than the rounding if the number of such pairs stays within 3 times
    the worst measured share (margin for CPUs this measurement could not imitate), and no value moves more than
    twice the largest move measured for its kind (``spread.assert_within_spread``). A pointing game flips only where the map's maximum is tied
    to float precision: none flipped in any configuration, one is allowed. A changed model or method moves
    these per-image values far beyond that, even where the published means stay within their intervals."""
    import dataclasses
    import json

    from gradeclip_utils import load_model

    config = json.loads((PUBLISHED_RUN / "config.json").read_text())
    published = {(row["key"], row["method"]): row for row in read(PUBLISHED_RUN / "per_image.csv")}
    model = load_model("synthetic", device="cpu")
    assert weights_digest(model.model) == config["weights"], "the committed model is not the published run's"
    data = ev.synthetic_set(model, config["distributed"]["items_per_rank"][0])
    batch_size = config["batch_size"]
    first = sorted(data.items, key=lambda item: item.label)[:batch_size]
    ev.evaluate(model, dataclasses.replace(data, items=first), tmp_path, batch_size=batch_size,
                tolerance=config["tolerance"], rise_masks=config["rise_masks"], rise_centre=config["rise_centre"],
                m2ib_steps=config["m2ib_steps"], m2ib_samples=config["m2ib_samples"], seed=config["seed"],
                sanity_images=0, timing_images=0, tie_seeds=config["tie_seeds"], progress=False)
    rows = read(tmp_path / "per_image.csv")
    assert {row["method"] for row in rows} == set(ev.DEFAULT_METHODS) and len(rows) == len(first) * len(ev.DEFAULT_METHODS)
    assert {row["key"] for row in rows} == {item.key for item in first}
    assert set(rows[0]) == set(next(iter(published.values())))
    assert_within_spread(rows, [published[(row["key"], row["method"])] for row in rows])
