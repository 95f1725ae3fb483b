"""ViT image classifiers on the command line and in the batch jobs: ``gradeclip explain``, ``explain-dataset`` and
``evaluate`` with a Hugging Face ViTForImageClassification saved to a folder (``hf:FOLDER``) and a timm classifier
loaded by name with a weights file (``timm:test_vit``, 1000 classes, so that ImageNet's wnid folders map to it),
both with random weights, offline.

The numbers are checked against the models run directly: the printed scores against the model's logits, the dataset
job's maps against ``explain_image`` for the same class, the first point of each deletion curve against the model's
own logit and probability of the untouched image; bad classes and scores are one-line errors before any work.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils import cli
from gradeclip_utils.inputs import prepare_image
from gradeclip_utils.maps_store import DatasetMaps

from support.classifiers import timm_classifier, to_hf
from support.families import relative
from support.realistic import realistic_init

LABELS = ["tabby, tabby cat", "tiger cat", "whippet", "sports car", "goldfish"]
TOLERANCE = 1e-5


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _errors(err: str) -> list[str]:
    """The command's own error lines (transformers writes its loading progress to stderr too)."""
    return [line for line in err.splitlines() if ": error: " in line]


def _pictures(root, folders, count=2, seed=0):
    rng = np.random.default_rng(seed)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers ViTForImageClassification of 5 named classes (native size 64 x 64), saved to a folder."""
    model = to_hf(timm_classifier(image_size=(64, 64), classes=len(LABELS), seed=3))
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {name: i for i, name in enumerate(LABELS)}
    folder = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """timm's test_vit (width 64, 6 blocks, ImageNet's 1000 classes) with realistic random weights, as a file."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_vit", pretrained=False)
    realistic_init(model, 0)
    path = tmp_path_factory.mktemp("timm_vit") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.eval()


@pytest.fixture(scope="module")
def named_tree(tmp_path_factory):
    return _pictures(tmp_path_factory.mktemp("named"), ["whippet", "tiger_cat"])


@pytest.fixture(scope="module")
def wnid_tree(tmp_path_factory):
    return _pictures(tmp_path_factory.mktemp("wnids"), ["n01440764", "n01443537"], seed=1)  # tench, goldfish


def _native_logits(model, loaded, path):
    """The classifier's own logits of the picture at native resolution, as explain prepares it."""
    pixels = prepare_image(loaded, Image.open(path), "native").pixels[None]
    with torch.no_grad():
        out = model(pixels, interpolate_pos_encoding=True) if hasattr(model, "config") else model(pixels)
    return getattr(out, "logits", out)[0]


# -------------------------------------------------------------------------------------------- explain
def test_explain_takes_classes_by_name_or_index(hf_folder, named_tree, tmp_path, capsys):
    folder, model = hf_folder
    image = named_tree / "whippet" / "0.png"
    logits = _native_logits(model, ge.load_model(f"hf:{folder}", device="cpu"), image)
    code, out, err = run(["explain", str(image), "whippet", "1", "--model", f"hf:{folder}", "--device", "cpu",
                          "--out", str(tmp_path / "fig.png")], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(None, 1)[1] for line in lines[:2]] == ["whippet", "tiger cat"]
    printed = torch.tensor([float(line.split()[0]) for line in lines[:2]])
    assert torch.allclose(printed, logits[[2, 1]], atol=1e-4)  # the logit, the classifier's default score
    assert "logit of each class; no word importance" in out and (tmp_path / "fig.png").is_file()
    code, out, err = run(["explain", str(image), "goldfish", "--model", f"hf:{folder}", "--device", "cpu",
                          "--score", "probability", "--out", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    assert abs(float(out.split()[0]) - float(logits.softmax(-1)[4])) < 1e-4  # over all 5 classes, not the one given


@pytest.mark.parametrize("argv, message", [
    (["whipet"], "unknown class name 'whipet': it is none of this classifier's 5 class labels; close matches: "
                 "'whippet' (2)"),
    (["7"], "class index 7 is out of range: this classifier has 5 classes (indices 0 to 4)"),
])
def test_explain_refuses_a_class_the_classifier_lacks_in_one_line(hf_folder, named_tree, tmp_path, capsys, argv,
                                                                   message):
    folder, _ = hf_folder
    code, out, err = run(["explain", str(named_tree / "whippet" / "0.png"), *argv, "--model", f"hf:{folder}",
                          "--device", "cpu", "--out", str(tmp_path / "fig.png")], capsys)
    assert code == 2 and len(_errors(err)) == 1 and _errors(err)[0].endswith(message)
    assert not (tmp_path / "fig.png").exists()


@pytest.mark.parametrize("command", ["explain", "explain-dataset", "evaluate"])
@pytest.mark.parametrize("score", ["cosine", "contrast"])
def test_a_score_a_classifier_lacks_is_refused_before_loading(hf_folder, timm_weights, named_tree, tmp_path,
                                                              monkeypatch, capsys, command, score):
    """``--score cosine`` given is refused by name for a classifier that ``--model`` names (a timm name, an hf:
    folder), before the model is loaded; left out, the cosine is the classifier's own score (its logit)."""
    import gradeclip_utils.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    if command == "evaluate" and score == "contrast":
        return  # the evaluation's --score has no contrast (argparse's choices refuse it)
    for model in (f"hf:{hf_folder[0]}", "timm:test_vit"):
        argv = {"explain": ["explain", str(named_tree / "whippet" / "0.png"), "whippet"],
                "explain-dataset": ["explain-dataset", str(named_tree), "--classes"],
                "evaluate": ["evaluate", "--dataset", "imagenet", "--data", str(named_tree)]}[command]
        code, out, err = run([*argv, "--model", model, "--score", score, "--out", str(tmp_path / "out")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err  # nothing loaded: the error alone
        assert f"score={score!r} is not a score of an image classifier" in err
        assert "it explains its class logit ('logit', the default) or its class probability" in err


# ------------------------------------------------------------------------------------- explain-dataset
@pytest.mark.parametrize("score", [None, "probability"])
def test_the_dataset_job_maps_each_wnid_folder_to_its_class(timm_weights, wnid_tree, tmp_path, capsys, score):
    """ImageNet's wnid folders are the classifier's classes 0 (tench) and 1 (goldfish); every image's stored map
    is explain_image's for its class, its score the model's own logit or probability (over all 1000 classes).
    (The probability's maps are about 1e-6 here: one image a batch, so that the batch's float32 sums do not
    move them by more than the tolerance.)"""
    path, model = timm_weights
    out = tmp_path / "maps"
    argv = ["explain-dataset", str(wnid_tree), "--classes", "--model", "timm:test_vit", "--pretrained", str(path),
            "--device", "cpu", "--out", str(out), "--batch-size", "1" if score else "3"] + (
        ["--score", score] if score else [])
    code, _, err = run(argv, capsys)
    assert code == 0, err
    maps = DatasetMaps(out)
    assert maps.score == (score or "logit") and maps.prompts == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert maps.settings["targets"]["classes"] == [0, 1] and maps.settings["targets"]["templates"] is None
    assert maps.settings["model"]["kind"] == "image classifier" and maps.settings["model"]["classes"] == 1000
    loaded = ge.load_model("timm:test_vit", str(path), device="cpu")
    for key in maps:
        stored = maps[key]
        image = wnid_tree / key
        expected = ge.explain_image(loaded, str(image), [stored.label], score=score, progress=False)
        assert expected.prompts == stored.prompts and relative(stored.maps, expected.raw[0]) < TOLERANCE
        logits = _native_logits(model, loaded, image)
        own = logits.softmax(-1) if score == "probability" else logits
        assert abs(float(stored.scores[0]) - float(own[stored.label])) < 1e-4


def test_the_dataset_job_takes_classes_from_a_prompts_file_and_names_folders_it_lacks(hf_folder, named_tree,
                                                                                      tmp_path, capsys):
    folder, _ = hf_folder
    prompts = tmp_path / "classes.txt"
    prompts.write_text("whippet\n3\n")
    code, _, err = run(["explain-dataset", str(named_tree), "--prompts", str(prompts), "--model", f"hf:{folder}",
                        "--device", "cpu", "--out", str(tmp_path / "maps")], capsys)
    assert code == 0, err
    maps = DatasetMaps(tmp_path / "maps")
    assert maps.prompts == ["whippet", "sports car"] and maps.settings["targets"]["classes"] == [2, 3]
    assert maps.score == "logit" and maps["whippet/0.png"].maps.shape == (2, 3, 5)
    bad = _pictures(tmp_path / "bad", ["whipet"])
    code, _, err = run(["explain-dataset", str(bad), "--classes", "--model", f"hf:{folder}", "--device", "cpu",
                        "--out", str(tmp_path / "bad_maps")], capsys)
    assert code == 2 and len(_errors(err)) == 1
    assert "class folder 'whipet': unknown class name 'whipet'" in err and "close matches: 'whippet' (2)" in err


# ------------------------------------------------------------------------------------------- evaluate
def _rows(out) -> list[dict[str, str]]:
    with open(out / "per_image.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("score, target", [(None, "gt"), ("probability", "pred")])
def test_the_evaluation_scores_the_classifiers_own_score(hf_folder, named_tree, tmp_path, capsys, score, target):
    """Each image explains its folder's class (whippet: 2, tiger cat: 1) or its prediction; the first point of
    deletion is the untouched image: the model's own logit and probability of the ground truth, computed here."""
    folder, model = hf_folder
    out = tmp_path / "eval"
    argv = ["evaluate", "--dataset", "imagenet", "--data", str(named_tree), "-n", "4", "--model", f"hf:{folder}",
            "--device", "cpu", "--methods", "grad_eclip,random" + (",raw_attention" if score is None else ""),
            "--sanity-images", "0",
            "--timing-images", "0", "--tie-seeds", "1", "--target", target, "--out", str(out)]
    code, _, err = run(argv + (["--score", score] if score else []), capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["kind"] == "image classifier" and config["explained_score"] == (score or "logit")
    assert config["classes"] == 5 and config.get("score") == score  # the classifier's default recorded as such
    methods = ["grad_eclip", "random"] + (["raw_attention"] if score is None else [])  # no score of its own
    loaded = ge.load_model(f"hf:{folder}", device="cpu")
    rows = _rows(out)
    assert sorted({row["method"] for row in rows}) == sorted(methods)
    for row in rows:
        picture = Image.open(named_tree / row["key"]).convert("RGB")
        with torch.no_grad():
            logits = model(loaded.preprocess(picture)[None]).logits[0]
        label = {"whippet": 2, "tiger_cat": 1}[row["key"].split("/")[0]]
        assert int(row["label"]) == label and row["prompt"] == LABELS[int(row["target"])]
        assert int(row["target"]) == (label if target == "gt" else int(logits.argmax()))
        assert abs(float(row["deletion_score_00"]) - float(logits[label])) < 1e-5
        assert abs(float(row["deletion_probability_00"]) - float(logits.softmax(-1)[label])) < 1e-6
        assert float(row["deletion_accuracy_00"]) == float(int(logits.argmax()) == label)
    if score is None:
        assert "'score' is the ground-truth class's logit" in (out / "summary.md").read_text()


def test_the_evaluation_refuses_what_a_classifier_cannot_run_by_name(hf_folder, named_tree, tmp_path, capsys):
    folder, _ = hf_folder
    base = ["evaluate", "--dataset", "imagenet", "--data", str(named_tree), "--model", f"hf:{folder}", "--device",
            "cpu", "--out", str(tmp_path / "eval")]
    code, _, err = run(base + ["--methods", "grad_eclip,maskclip"], capsys)
    assert code == 2 and "maskclip is not available for Hugging Face ViT classifier models" in err
    code, _, err = run(base + ["--protocol", "authors"], capsys)
    assert code == 2 and "an image classifier (Hugging Face ViT classifier) is evaluated under the project's" in err
    code, _, err = run(["evaluate", "--model", f"hf:{folder}", "--device", "cpu", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "--dataset imagenet --data FOLDER" in err
    assert not (tmp_path / "eval" / "per_image.csv").exists()
