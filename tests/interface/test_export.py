"""Figure export: the files, and manifests that describe their figures well enough to make them again."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from PIL import Image

import gradeclip_utils
from gradeclip_utils import explain_image, explain_text
from gradeclip_utils.export import FigureExporter, describe_image, load_manifests
from gradeclip_utils.studies.common import sample_scene_path
from gradeclip_utils.synthetic import generate_scene
from gradeclip_utils.synthetic.dataset import make_example


@pytest.fixture(scope="module")
def scene():
    return generate_scene(11, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}])


def test_manifest_describes_an_image_explanation(tiny, tmp_path):
    path = sample_scene_path()
    ex = explain_image(tiny, str(path), ["a red circle", "a blue square"], layers=(1,), mode="official")
    exporter = FigureExporter(tmp_path, notebook="nb", model=tiny, parameters={"MODEL": "tiny", "QUICK": True})
    fig = ex.plot()
    manifest = exporter.save(fig, "maps", explanation=ex, images=[str(path)], description="two prompts")
    plt.close(fig)

    for suffix in ("png", "pdf", "json"):
        assert (tmp_path / f"maps.{suffix}").is_file()
    assert (tmp_path / "maps.pdf").read_bytes().startswith(b"%PDF")
    on_disk = json.loads((tmp_path / "maps.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["files"] == {"png": "maps.png", "pdf": "maps.pdf"}
    assert on_disk["figure"] == "maps" and on_disk["notebook"] == "nb"
    assert on_disk["parameters"] == {"MODEL": "tiny", "QUICK": True}
    assert on_disk["model"] == "tiny-test-clip" and on_disk["pretrained"] is None
    assert on_disk["precision"] == "fp32" and on_disk["device"] == "cpu"
    assert on_disk["method"] == "grad_eclip"
    assert on_disk["settings"]["layers"] == [1] and on_disk["settings"]["mode"] == "official"
    assert on_disk["settings"]["qk"] == "raw" and on_disk["settings"]["resolution"] == "native"
    assert on_disk["prompts"] == ["a red circle", "a blue square"]
    assert on_disk["package"]["version"] == gradeclip_utils.__version__
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    assert on_disk["title"] == fig.get_suptitle()
    assert on_disk["description"] == "two prompts"
    image = on_disk["images"][0]
    assert image["kind"] == "file" and image["path"] == "data/samples/three_shapes.png"
    assert image["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert image["size"] == list(Image.open(path).size)
    # the PNG is the figure at the exporter's dpi (bbox "tight" trims only margins)
    with Image.open(tmp_path / "maps.png") as png:
        width, height = png.size
    assert 0.5 * fig.get_figwidth() * 150 < width <= fig.get_figwidth() * 150 + 2
    assert 0.5 * fig.get_figheight() * 150 < height <= fig.get_figheight() * 150 + 2


def test_manifest_of_a_text_explanation_and_explicit_fields_win(tiny, tmp_path, scene):
    words = explain_text(tiny, scene.image, ["a red circle"], layers=2)
    exporter = FigureExporter(tmp_path, model=tiny)
    fig = words.plot_bar()
    manifest = exporter.save(fig, "words", explanation=words, images=[scene], method="custom",
                             settings={"layers": [0]}, data={"importance": words.word_importance[0, 0]})
    plt.close(fig)
    assert manifest["prompts"] == ["a red circle"]
    assert manifest["method"] == "custom" and manifest["settings"]["layers"] == [0]
    assert manifest["data"]["importance"] == pytest.approx(words.word_importance[0, 0].tolist())
    assert manifest["images"][0]["kind"] == "synthetic_scene" and manifest["images"][0]["seed"] == 11


@pytest.mark.parametrize("make", [
    lambda: generate_scene(11, objects=[{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}]),
    lambda: generate_scene(12, n_objects=3),
    lambda: generate_scene(13),
    lambda: make_example(1_000_600_000, kind="count").scene,
])
def test_scene_descriptions_regenerate_the_same_picture(make):
    scene = make()
    entry = describe_image(scene, name="s")
    again = eval(entry["recipe"], {"generate_scene": generate_scene, "make_example": make_example})
    assert np.array_equal(np.asarray(again.image), np.asarray(scene.image))
    assert entry["sha256"] == hashlib.sha256(np.asarray(again.image.convert("RGB")).tobytes()).hexdigest()
    assert entry["name"] == "s" and entry["size"] == [64, 64] and entry["seed"] == scene.seed


def test_a_scene_no_recipe_makes_has_none(scene):
    edited = generate_scene(scene.seed, n_objects=2)
    edited.image = edited.image.rotate(90)
    assert describe_image(edited)["recipe"] is None


def test_picture_and_unknown_descriptions():
    picture = Image.new("RGB", (5, 3), (1, 2, 3))
    entry = describe_image(picture)
    assert entry == {"kind": "picture", "size": [5, 3],
                     "sha256": hashlib.sha256(np.asarray(picture).tobytes()).hexdigest()}
    assert describe_image(42) == {"kind": "int"}


def test_values_become_plain_json(tmp_path):
    exporter = FigureExporter(tmp_path)
    fig, ax = plt.subplots()
    manifest = exporter.save(fig, "values", data={"tensor": torch.tensor([1.5, 2.0]), "array": np.arange(3),
                                                  "scalar": np.float32(0.5), "nan": float("nan"),
                                                  "path": tmp_path, "tuple": (1, 2)})
    plt.close(fig)
    data = json.loads((tmp_path / "values.json").read_text())["data"]
    assert data == {"tensor": [1.5, 2.0], "array": [0, 1, 2], "scalar": 0.5, "nan": "nan", "path": str(tmp_path),
                    "tuple": [1, 2]}
    assert manifest["model"] is None and manifest["images"] == []


def test_show_saves_and_closes(tmp_path):
    exporter = FigureExporter(tmp_path, formats=("png",))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    exporter.show(fig, "line")
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.json", "line.png"]
    assert [m["figure"] for m in load_manifests(tmp_path)] == ["line"]
    assert list(exporter.summary()["figure"]) == ["line"]


def test_bad_names_and_inputs_are_refused(tmp_path):
    exporter = FigureExporter(tmp_path)
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="figure name"):
        exporter.save(fig, "../escape")
    with pytest.raises(TypeError, match="Figure"):
        exporter.save("not a figure", "x")
    with pytest.raises(ValueError, match="image names"):
        exporter.save(fig, "x", images=[Image.new("RGB", (2, 2))], image_names=["a", "b"])
    plt.close(fig)
    assert not any(tmp_path.iterdir())
