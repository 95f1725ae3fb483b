"""The embedded synthetic CLIP warns, once per process for each kind, when it is given a picture that is not a
scene of its world or a prompt with words outside its captions' vocabulary; never for its own scenes and
captions. ``is_scene`` is checked both ways over many seeds: every held-out and training scene and the bundled
sample pass; the bundled photographs, their crops, noise and natural-looking random fields do not."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils import cli
from gradeclip_utils.inputs import prepare_images
from gradeclip_utils.prompts import encode_texts
from gradeclip_utils.synthetic import COLOURS, SHAPES, SIZES, class_prompts, embedded, generate_scene
from gradeclip_utils.synthetic.captions import NUMBER_WORDS, RELATIONS
from gradeclip_utils.synthetic.dataset import HELDOUT_SEED_START, make_example

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "data" / "photos").glob("*.jpg"))
SAMPLES = sorted((ROOT / "data" / "samples").glob("*.png"))
REAL_CLIP = ("load_model('ViT-B-16', pretrained='openai')", "--model ViT-B-16 --pretrained openai")


@pytest.fixture(scope="module")
def model():
    return ge.load_model(device="cpu")


@pytest.fixture()
def fresh(monkeypatch):
    """A process that has warned about nothing yet."""
    monkeypatch.setattr(embedded, "_WARNED", set())


def outside(record, kind: str) -> list[str]:
    """The messages of the embedded model's warnings of ``kind`` ("picture" or "words") in ``record`` (warnings,
    or lines of text)."""
    key = "does not look like a scene" if kind == "picture" else "knows only the words"
    messages = [str(getattr(w, "message", w)) for w in record]
    return [message for message in messages if key in message]


def test_only_the_embedded_model_knows_a_world(model, tiny):
    assert isinstance(model.known_inputs, embedded.SyntheticWorld)
    assert tiny.known_inputs is None
    assert ge.load_model(str(ROOT / "data" / "synthetic_clip"), device="cpu").known_inputs is not None


def test_a_photograph_is_warned_about_once(model, fresh):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ge.explain_image(model, str(PHOTOS[0]), ["a red circle"], resolution="model")
        ge.explain_image(model, str(PHOTOS[1]), ["a blue square"], resolution="model")
        ge.explain_text(model, str(PHOTOS[2]), ["a yellow star"], resolution="model")
    messages = outside(record, "picture")
    assert len(messages) == 1 and PHOTOS[0].name in messages[0]
    assert all(way in messages[0] for way in REAL_CLIP)
    assert not outside(record, "words")
    assert {w.filename for w in record if "scene" in str(w.message)} == {__file__}  # the user's line


def test_an_unknown_word_is_warned_about_once(model, fresh):
    scene = generate_scene(HELDOUT_SEED_START + 7).image
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ge.explain_image(model, scene, ["a red circle", "a cat"])
        encode_texts(model, ["a photo of a dog"])
        ge.explain_text(model, scene, ["a tabby cat"])
    messages = outside(record, "words")
    assert len(messages) == 1 and "'cat'" in messages[0] and "'red'" not in messages[0]
    assert all(way in messages[0] for way in REAL_CLIP)
    assert not outside(record, "picture")


def test_the_two_kinds_are_warned_about_apart(model, fresh):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        encode_texts(model, ["a cat"])
        prepare_images(model, str(PHOTOS[0]), "model")
        encode_texts(model, ["a dog"])
        prepare_images(model, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(outside(record, "words")) == 1 and len(outside(record, "picture")) == 1


def test_scenes_and_their_captions_are_never_warned_about(model, fresh):
    scenes = [generate_scene(HELDOUT_SEED_START + 500_000 + i) for i in range(24)]
    texts = [caption.text for scene in scenes for caption in [*scene.captions.values(), *scene.negatives.values()]]
    texts += class_prompts()[0] + ["A Red Circle.", "two large white crosses", "a shape below a small star"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ge.explain_image(model, [scene.image for scene in scenes[:4]] + [str(p) for p in SAMPLES], texts[:6])
        ge.explain_text(model, scenes[4].array, texts[6:9])
        encode_texts(model, texts)
        prepare_images(model, [scene.image for scene in scenes], "native")
    assert not outside(record, "picture") and not outside(record, "words")


def test_the_command_line_shows_each_warning_once_as_a_clean_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "gradeclip_utils.cli", "explain", str(PHOTOS[1]), "a cat", "a dog",
                             "--out", str(tmp_path / "fig.png")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("gradeclip explain: warning: ") for line in lines), lines
    assert len(outside(lines, "picture")) == 1 and len(outside(lines, "words")) == 1
    assert len(lines) == len(set(lines)) == 3  # and the downscaling, said once for the maps and the words


def test_one_line_warnings_restore_python_s_format():
    original = warnings.formatwarning
    with cli._one_line_warnings("gradeclip explain"):
        assert warnings.formatwarning("a note", UserWarning, "x.py", 3) == "gradeclip explain: warning: a note\n"
        assert warnings.formatwarning("a note", UserWarning, "x.py", 3) == ""  # said once
    assert warnings.formatwarning is original


# ------------------------------------------------------------------------------------- the vocabulary
def test_the_vocabulary_is_the_caption_generator_s():
    vocabulary = embedded.vocabulary()
    assert {*COLOURS, *SHAPES, *SIZES, *NUMBER_WORDS.values(), "a", "an", "and", "shape", "shapes",
            "crosses"} <= vocabulary
    assert {word for relation in RELATIONS for word in relation.split()} <= vocabulary
    for i in range(300):  # every word of every caption, true or false, of scenes and training examples
        scene = generate_scene(HELDOUT_SEED_START + i)
        example = make_example(i)
        texts = [c.text for c in [*scene.captions.values(), *scene.negatives.values(), example.caption,
                                  *example.negatives]]
        assert embedded.unknown_words(texts) == [], texts
    assert embedded.unknown_words(["a photo of a cat", "A RED circle.", "3 red circles", "a close-up"]) == [
        "photo", "cat", "3", "close", "up"]


# ----------------------------------------------------------------------------------------- is_scene
def test_every_scene_passes():
    for i in range(400):
        assert embedded.is_scene(generate_scene(HELDOUT_SEED_START + 13 * i).image), i
    for i in range(200):
        assert embedded.is_scene(make_example(7 * i).scene.image), i
    for kind in ("single", "partial", "full", "pair", "count", "relation"):
        for i in range(10):
            assert embedded.is_scene(make_example(100_000 + i, kind=kind).scene.image), (kind, i)
    for size in (1, 6):
        for i in range(20):
            assert embedded.is_scene(generate_scene(HELDOUT_SEED_START + i, n_objects=size).image)
    assert SAMPLES and all(embedded.is_scene(Image.open(path)) for path in SAMPLES)


def _natural_field(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A random field with a natural image's 1/f^a spectrum (a between 1 and 2) and mixed colour channels."""
    frequency = np.fft.fftfreq(size)
    radius = np.hypot(frequency[:, None], frequency[None])
    radius[0, 0] = 1.0
    channels = [np.real(np.fft.ifft2((rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size)))
                                     / radius ** rng.uniform(1, 2))) for _ in range(3)]
    field = np.stack(channels, -1) @ (np.eye(3) + 0.3 * rng.normal(size=(3, 3)))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def test_photographs_noise_and_natural_fields_do_not_pass():
    photos = [Image.open(path).convert("RGB") for path in PHOTOS]
    assert photos
    for photo in photos:
        assert not embedded.is_scene(photo)
        assert not embedded.is_scene(photo.resize((64, 64), Image.BICUBIC))
    for seed in range(200):
        rng = np.random.default_rng(seed)
        photo = photos[seed % len(photos)]
        width, height = photo.size
        side = int(rng.integers(32, min(width, height)))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        grey = np.clip(rng.normal(rng.uniform(50, 125), rng.uniform(3, 30), (64, 64, 1)), 0, 255).astype(np.uint8)
        candidates = {
            "photo crop": photo.crop((x, y, x + side, y + side)).resize((64, 64), Image.BICUBIC),
            "photo cut": photo.crop((x, y, x + 64, y + 64)),
            "uniform noise": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "grey noise": np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, -1),
            "a background without shapes": np.repeat(grey, 3, -1),
            "natural field": _natural_field(rng),
            "grey natural field": np.repeat(_natural_field(rng).mean(-1, keepdims=True).astype(np.uint8), 3, -1),
        }
        for name, picture in candidates.items():
            assert not embedded.is_scene(picture), (name, seed)
