"""The synthetic world's vocabulary (shapes, colours, sizes) and what a scene holds (``Scene``,
``SceneObject``): below both the scene generator (``scenes``) and the caption grammar (``captions``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["SHAPES", "COLOURS", "SIZES", "COLOUR_RGB", "SceneObject", "Scene"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Named colours and their nominal RGB value. Each object's actual colour is the nominal value plus a
#: small per-object jitter (``SceneConfig.colour_jitter``), stored in ``SceneObject.rgb``.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (245, 230, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SIZES: tuple[str, ...] = ("small", "large")


@dataclass
class SceneObject:
    """One object of a scene. ``cx, cy`` is the shape's centre in pixels (x to the right, y down)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    rgb: tuple[int, int, int]
    #: pixels of the full (unoccluded) shape and of its visible part
    area: int = 0
    visible_area: int = 0

    @property
    def description(self) -> str:
        """``"red circle"``: colour and shape, the words a caption uses to name this object."""
        return f"{self.colour} {self.shape}"

    def as_dict(self) -> dict:
        return {
            "shape": self.shape, "colour": self.colour, "size": self.size,
            "cx": float(self.cx), "cy": float(self.cy), "radius": float(self.radius),
            "rgb": tuple(int(c) for c in self.rgb),
            "area": int(self.area), "visible_area": int(self.visible_area),
        }


@dataclass
class Scene:
    """A generated scene.

    ``image`` is an RGB PIL image; ``masks`` is a boolean array (n_objects, H, W) of the visible
    pixels of each object (painting order = object order); ``full_masks`` are the unoccluded shapes.
    ``captions`` and ``negatives`` are filled by :func:`gradeclip_utils.synthetic.captions.describe_scene`
    (``generate_scene`` does it unless ``with_captions=False``).
    """

    seed: int
    image: Image.Image
    masks: np.ndarray
    full_masks: np.ndarray
    objects: list[SceneObject]
    background: dict
    #: the background alone (H, W, 3 uint8), before any object was painted
    background_array: Optional[np.ndarray] = None
    captions: dict = field(default_factory=dict)
    negatives: dict = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def array(self) -> np.ndarray:
        """The image as a uint8 array (H, W, 3)."""
        return np.asarray(self.image)

    def attributes(self) -> list[dict]:
        return [o.as_dict() for o in self.objects]
