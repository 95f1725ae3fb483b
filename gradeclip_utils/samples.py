"""The sample images and what the package does with any image before explaining it: the bundled
photographs and synthetic scene, their captions, readable names, the input ``explain_image`` takes, the
default resolution, the prompts that describe an image, and a synthetic scene's prompted objects' masks.

Both the explorers (``widgets``) and the notebooks' studies (``studies``) build on these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .resources import PHOTOS_DIR, SAMPLES_DIR

SYNTHETIC = "synthetic"

#: captions that describe the bundled photographs (used by the notebooks on a real model)
PHOTO_CAPTIONS: dict[str, str] = {
    "astronaut": "an astronaut in an orange suit in front of a flag",
    "chelsea": "a close-up of a tabby cat with green eyes",
    "coffee": "a red cup of coffee on a saucer with a spoon",
    "rocket": "a white rocket on a launch pad at dusk",
}


def is_synthetic(model: Any) -> bool:
    """Whether ``model`` (a LoadedModel or a model name) is the embedded synthetic CLIP."""
    name = model if isinstance(model, str) else getattr(model, "name", "")
    return name == SYNTHETIC


def sample_photos() -> list[Path]:
    """The bundled photographs (data/photos, licences in LICENSES.md beside them), sorted by name."""
    photos = sorted(p for p in PHOTOS_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise FileNotFoundError(f"no sample photographs under {PHOTOS_DIR}")
    return photos


def sample_scene_path() -> Path:
    """The bundled synthetic sample scene (a red circle, a blue square, a yellow star)."""
    return SAMPLES_DIR / "three_shapes.png"


def image_name(image: Any, index: int = 0) -> str:
    """A short readable name: a file's stem, ``scene <seed>`` for a synthetic scene, else ``image <i>``."""
    from .synthetic import Scene

    if isinstance(image, (str, Path)):
        return Path(image).stem
    if isinstance(image, Scene):
        return f"scene {image.seed}"
    return f"image {index}"


def as_input(image: Any) -> Any:
    """What ``explain_image`` takes: a synthetic scene becomes its picture, anything else stays."""
    from .synthetic import Scene

    return image.image if isinstance(image, Scene) else image


def named_images(images: Any) -> dict[str, Any]:
    """Images as an ordered name -> image dict (a dict is kept; names are made unique)."""
    if isinstance(images, dict):
        if not images:
            raise ValueError("no images given")
        return dict(images)
    if isinstance(images, (str, Path, Image.Image)) or not isinstance(images, Sequence):
        images = [images]
    if not images:
        raise ValueError("no images given")
    named: dict[str, Any] = {}
    for index, image in enumerate(images):
        name, k = image_name(image, index), 2
        base = name
        while name in named:
            name, k = f"{base} ({k})", k + 1
        named[name] = image
    return named


def default_images(model: Any, n_scenes: int = 4, seed: int = 2024) -> list[Any]:
    """The notebooks' default images: synthetic scenes for the synthetic model, else the photographs."""
    if is_synthetic(model):
        from .synthetic import generate_scene

        return [generate_scene(seed + i, n_objects=2 + i % 3) for i in range(n_scenes)]
    return [str(p) for p in sample_photos()]


def object_prompts(scene: Any) -> list[str]:
    """"a red circle" for every object of a synthetic scene that its colour and shape name alone (an
    object that shares both with another is left out: its prompt would name both)."""
    from .synthetic.captions import object_caption, unique_objects

    return [object_caption(scene.objects, index).text for index in sorted(unique_objects(scene.objects))]


def image_prompts(image: Any) -> list[str]:
    """Prompts that describe ``image``: a synthetic scene's object prompts, then its captions (pair,
    relation, the full list); a bundled photograph's caption; [] for other images."""
    from .synthetic import Scene

    if isinstance(image, Scene):
        prompts = object_prompts(image)
        for kind in ("pair", "relation", "full"):
            if kind in image.captions and image.captions[kind].text not in prompts:
                prompts.append(image.captions[kind].text)
        return prompts
    if isinstance(image, (str, Path)) and Path(image).stem in PHOTO_CAPTIONS:
        return [PHOTO_CAPTIONS[Path(image).stem]]
    return []


def prompt_mask(scene: Any, prompt: str) -> np.ndarray | None:
    """For a synthetic scene and a caption of its grammar: the union of the visible masks of the objects
    that match any of the caption's noun phrases; None when the prompt is not of the grammar or no
    object matches."""
    from .synthetic import Scene
    from .synthetic.captions import parse_caption

    if not isinstance(scene, Scene):
        return None
    try:
        caption = parse_caption(prompt)
    except ValueError:
        return None
    mask = np.zeros(scene.masks.shape[1:], dtype=bool)
    for index, obj in enumerate(scene.objects):
        if any(phrase.matches(obj) for phrase in caption.phrases):
            mask |= scene.masks[index]
    return mask if mask.any() else None


def default_resolution(model: Any, image: Any) -> str:
    """"model" for synthetic scenes or the synthetic model (64 x 64 inputs), else "native"."""
    from .synthetic import Scene

    return "model" if isinstance(image, Scene) or is_synthetic(model) else "native"


def default_caption(image: Any, kinds: Sequence[str] = ("pair", "full")) -> str:
    """A caption for an image: a synthetic scene's first caption of ``kinds``, or a bundled
    photograph's ``PHOTO_CAPTIONS`` entry; a clear error for other images."""
    from .synthetic import Scene

    if isinstance(image, Scene):
        for kind in kinds:
            if kind in image.captions:
                return image.captions[kind].text
        raise ValueError(f"scene {image.seed} has no caption of kinds {tuple(kinds)}")
    stem = Path(str(image)).stem
    if stem in PHOTO_CAPTIONS:
        return PHOTO_CAPTIONS[stem]
    raise ValueError(f"no built-in caption for {image!r}: give one (SENTENCE / PROMPT in the parameter cell)")
