"""The embedded synthetic classifier: its files (safetensors only, under 5 MB), ``load_model("synthetic-classifier")``
offline, its model card's figures recomputed on the card's own held-out scenes, and deterministic training."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from gradeclip_utils.resources import SYNTHETIC_CLASSIFIER_DIR
from gradeclip_utils.synthetic.classifier import (CLASS_NAMES, CLASSIFIER_CONFIG, CONFIG_NAME, WEIGHTS_NAME,
                                                  build_classifier, class_index, class_targets, classifier_batch,
                                                  classifier_scene)
from gradeclip_utils.synthetic.dataset import HELDOUT_SEED_START, images_to_tensor
from gradeclip_utils.synthetic.scenes import COLOURS, SHAPES, generate_scene

@pytest.fixture(scope="module")
def loaded():
    from gradeclip_utils import load_model

    torch.set_num_threads(2)
    return load_model("synthetic-classifier", device="cpu")


def test_files_size_and_config():
    files = sorted(p.name for p in SYNTHETIC_CLASSIFIER_DIR.iterdir() if p.is_file())
    assert files == sorted([CONFIG_NAME, WEIGHTS_NAME, "MODEL_CARD.md"])  # no pickle beside the safetensors
    assert (SYNTHETIC_CLASSIFIER_DIR / WEIGHTS_NAME).stat().st_size < 5 * 1024 * 1024
    assert json.loads((SYNTHETIC_CLASSIFIER_DIR / CONFIG_NAME).read_text()) == CLASSIFIER_CONFIG
    assert CLASSIFIER_CONFIG["class_names"] == list(CLASS_NAMES) and len(CLASS_NAMES) == len(COLOURS) * len(SHAPES)
    from safetensors.torch import load_file

    state = load_file(str(SYNTHETIC_CLASSIFIER_DIR / WEIGHTS_NAME))
    own = build_classifier().state_dict()
    assert set(state) == set(own) and all(state[k].shape == own[k].shape for k in own)
    assert all(v.dtype == torch.float32 for v in state.values())


def test_loads_offline_as_a_timm_classifier(loaded, monkeypatch):
    from timm.models.vision_transformer import VisionTransformer

    from gradeclip_utils import explain_image

    assert loaded.name == "synthetic-classifier" and isinstance(loaded.model, VisionTransformer)
    assert loaded.adapter.is_classifier and loaded.family == "timm ViT classifier"
    assert loaded.adapter.labels == CLASS_NAMES and not loaded.model.training
    assert loaded.normalization == (tuple(CLASSIFIER_CONFIG["preprocess"]["mean"]),
                                    tuple(CLASSIFIER_CONFIG["preprocess"]["std"]))
    scene = generate_scene(HELDOUT_SEED_START + 3, n_objects=2, with_captions=False)
    mean, std = CLASSIFIER_CONFIG["preprocess"]["mean"], CLASSIFIER_CONFIG["preprocess"]["std"]
    torch.testing.assert_close(loaded.preprocess(scene.image)[None], images_to_tensor([scene.image], mean, std),
                               atol=1e-5, rtol=0)  # a scene passes unchanged apart from the normalisation
    names = [o.description for o in scene.objects]
    explanation = explain_image(loaded, scene.image, [names[0], class_index(scene.objects[1].colour,
                                                                            scene.objects[1].shape)], progress=False)
    with torch.no_grad():
        logits = loaded.model(loaded.preprocess(scene.image)[None])
    indices = [CLASS_NAMES.index(n) for n in names]
    torch.testing.assert_close(explanation.scores[0], logits[0, indices], atol=1e-5, rtol=1e-5)  # the class logits
    assert explanation.raw[0].shape == (2, 8, 8)
    with pytest.raises(ValueError, match="red circle"):
        explain_image(loaded, scene.image, ["red circel"], progress=False)
    with pytest.warns(UserWarning, match="the embedded synthetic classifier"):  # pictures from outside the world
        monkeypatch.setattr("gradeclip_utils.synthetic.embedded._WARNED", set())
        explain_image(loaded, Image.new("RGB", (64, 64), (10, 200, 90)), ["red circle"], progress=False)


def test_a_folder_of_the_format_loads_and_pretrained_is_refused(tmp_path):
    from gradeclip_utils import load_model
    from gradeclip_utils.synthetic.classifier import save_classifier

    torch.manual_seed(1)
    model = build_classifier()
    save_classifier(model, tmp_path / "cls")
    loaded = load_model(str(tmp_path / "cls"), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="carries its own weights"):
        load_model("synthetic-classifier", pretrained=str(tmp_path / "cls" / WEIGHTS_NAME))
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        from gradeclip_utils.loading import _load_synthetic_classifier

        _load_synthetic_classifier(str(tmp_path), None, torch.device("cpu"), "fp32")


def test_training_stream_targets():
    batch = classifier_batch(3, 16)
    again = classifier_batch(3, 16)
    assert torch.equal(batch["images"], again["images"]) and torch.equal(batch["targets"], again["targets"])
    assert batch["images"].shape == (16, 3, 64, 64) and batch["images"].dtype == torch.uint8
    torch.testing.assert_close(batch["targets"].sum(1), torch.ones(16))
    scenes = [classifier_scene(k) for k in range(48, 64)]
    assert all(1 <= s.n_objects <= 4 for s in scenes) and {s.n_objects == 1 for s in scenes} == {True, False}
    for scene, row in zip(scenes, batch["targets"]):
        present = {class_index(o.colour, o.shape) for o in scene.objects}
        assert set(torch.nonzero(row).flatten().tolist()) == present
        assert torch.allclose(row[sorted(present)], torch.full((len(present),), 1 / len(present)))
    assert class_targets(scenes[:1])[0, class_index(scenes[0].objects[0].colour, scenes[0].objects[0].shape)] > 0


def test_training_is_deterministic(tmp_path):
    """Two tiny runs with the same arguments give equal weights; another seed gives others."""
    from safetensors.torch import load_file

    from gradeclip_utils.synthetic.train_classifier import train_classifier

    def run(name: str, seed: int = 0) -> dict:
        train_classifier(tmp_path / name, steps=3, batch_size=6, warmup=1, workers=0, eval_every=2, threads=1,
                         evaluate=False, progress=False, seed=seed)
        return load_file(str(tmp_path / name / "model" / WEIGHTS_NAME))

    first, second, other = run("a"), run("b"), run("c", seed=1)
    assert set(first) == set(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert (tmp_path / "a" / "log.csv").read_text().splitlines()[0] == "step,loss,lr,elapsed_s,accuracy"
    assert len((tmp_path / "a" / "log.csv").read_text().splitlines()) == 4


def table_rows(table: str) -> dict[str, tuple[float, int]]:
    """An evaluation table (``format_classifier_table``): metric -> (value as a fraction, n)."""
    rows = {}
    for line in table.splitlines():
        match = re.match(r"^\s*(\S.*?)\s{2,}(\d+\.\d)%\s.*?(\d+)$", line)
        if match:
            rows[match.group(1).strip()] = (float(match.group(2)) / 100, int(match.group(3)))
    return rows


def card_table() -> dict[str, tuple[float, int]]:
    """The model card's evaluation table."""
    card = (SYNTHETIC_CLASSIFIER_DIR / "MODEL_CARD.md").read_text()
    rows = table_rows(card.split("## Evaluation", 1)[1].split("```", 2)[1])
    assert len(rows) >= 10, f"the model card's evaluation table was not found ({len(rows)} rows)"
    return rows


@pytest.mark.slow
def test_model_card_figures_are_reproduced(loaded):
    """Every figure of the card's table recomputed by the card's own function on the card's own held-out scenes
    (700 single-object scenes, 300 localisation scenes). Tolerance: the card's rounding (0.05%) plus one item of
    the row (1/n: a near-tie of two logits or of a map's peak may flip with another thread count); the energy and
    the IoU, means of continuous values, within 0.15%."""
    from gradeclip_utils.synthetic.train_classifier import evaluate_classifier, format_classifier_table

    result = evaluate_classifier(loaded)
    measured = table_rows(format_classifier_table(result))
    card = card_table()
    assert set(card) == set(measured), set(card) ^ set(measured)
    off = []
    for name, (value, n) in measured.items():
        published, published_n = card[name]
        assert published_n == n, name
        band = 0.0015 if ("energy" in name or "IoU" in name) else 1 / n + 0.0005
        if abs(value - published) > band:
            off.append(f"{name}: {value:.1%} against the card's {published:.1%} (tolerance {band:.2%})")
    assert not off, "\n".join(off)
    loc = result["localisation"]
    assert sum(loc["misses"].values()) == pytest.approx(1 - loc["pointing"])


def test_accuracy_eval_counts_colours_and_shapes():
    """``accuracy_eval`` on a stand-in model that always answers one class: top-1, colour and shape shares are the
    shares of scenes of that class, colour and shape."""
    from gradeclip_utils.synthetic.train_classifier import accuracy_eval

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            out = torch.zeros(len(x), len(CLASS_NAMES))
            out[:, class_index("red", "circle")] = 1.0
            return out + 0 * self.w

    result = accuracy_eval(Constant(), n=30, offset=123)
    scenes = [generate_scene(HELDOUT_SEED_START + 123 + i, n_objects=1, with_captions=False) for i in range(30)]
    objects = [s.objects[0] for s in scenes]
    assert result["top1"] == pytest.approx(np.mean([o.description == "red circle" for o in objects]))
    assert result["colour"] == pytest.approx(np.mean([o.colour == "red" for o in objects]))
    assert result["shape"] == pytest.approx(np.mean([o.shape == "circle" for o in objects]))
