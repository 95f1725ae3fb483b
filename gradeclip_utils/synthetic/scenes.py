"""Seeded procedural scenes of simple coloured shapes with exact ground truth.

A scene is drawn without anti-aliasing: every object is rasterised as a binary mask (pixel centres
inside the shape) and painted with one flat RGB colour, later objects over earlier ones. The visible
instance mask of an object is therefore exactly the set of pixels that carry its colour in the image,
and the ground truth (masks, attributes, counts, positions) is exact.

Everything is a pure function of the seed: ``generate_scene(seed)`` always returns the same scene.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .captions import describe_scene
from .world import COLOUR_RGB, COLOURS, SHAPES, SIZES, Scene, SceneObject

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "COLOUR_RGB",
    "SceneObject",
    "Scene",
    "SceneConfig",
    "generate_scene",
    "render_objects",
    "shape_mask",
]


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the scene distribution (all sizes in pixels of a ``image_size`` square)."""

    image_size: int = 64
    #: half-extent range of a small / large object (the circle's radius)
    small_radius: tuple[float, float] = (5.5, 7.0)
    large_radius: tuple[float, float] = (9.5, 12.0)
    #: per-channel uniform jitter added to the nominal colour
    colour_jitter: int = 12
    #: an object may lose at most this share of its own pixels to objects drawn over it
    max_occlusion: float = 0.3
    #: background grey level range and texture/noise strengths
    background_level: tuple[int, int] = (50, 125)
    #: per-channel tint of the background grey, drawn uniformly from [-background_tint, background_tint]
    background_tint: int = 8
    texture_contrast: tuple[int, int] = (6, 16)
    noise_std: tuple[float, float] = (3.0, 10.0)
    #: probabilities of a plain, textured or noisy background
    background_probs: tuple[float, float, float] = (0.4, 0.3, 0.3)
    placement_tries: int = 60


# ----------------------------------------------------------------------------------------------
# rasterisation


def _polygon(cx: float, cy: float, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(cx + x, cy + y) for x, y in pts]


def _shape_outline(shape: str, cx: float, cy: float, r: float):
    """Return ("ellipse", bbox) or ("polygon", points) for a shape of half-extent ``r``."""
    if shape == "circle":
        return "ellipse", (cx - r, cy - r, cx + r, cy + r)
    if shape == "square":
        s = 0.88 * r
        return "polygon", _polygon(cx, cy, [(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        # equilateral, pointing up, vertically centred on its bounding box
        R = 1.15 * r
        h = 1.5 * R
        top = -h / 2
        half_base = R * math.sqrt(3) / 2
        return "polygon", _polygon(cx, cy, [(0.0, top), (half_base, top + h), (-half_base, top + h)])
    if shape == "star":
        R = 1.12 * r
        ri = 0.45 * R
        pts = []
        for k in range(10):
            ang = -math.pi / 2 + k * math.pi / 5
            rad = R if k % 2 == 0 else ri
            pts.append((rad * math.cos(ang), rad * math.sin(ang) + 0.1 * R))
        return "polygon", _polygon(cx, cy, pts)
    if shape == "cross":
        a = r
        w = 0.36 * r
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
               (-a, -w), (-w, -w)]
        return "polygon", _polygon(cx, cy, pts)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def shape_mask(shape: str, cx: float, cy: float, radius: float, image_size: int = 64) -> np.ndarray:
    """Binary (H, W) mask of a shape, rasterised without anti-aliasing."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    kind, geom = _shape_outline(shape, cx, cy, radius)
    if kind == "ellipse":
        draw.ellipse(geom, fill=255)
    else:
        draw.polygon(geom, fill=255)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, dict]:
    n = cfg.image_size
    level = int(rng.integers(cfg.background_level[0], cfg.background_level[1] + 1))
    tint = rng.integers(-cfg.background_tint, cfg.background_tint + 1, size=3)
    base = np.clip(level + tint, 0, 255).astype(np.float32)
    img = np.broadcast_to(base, (n, n, 3)).copy()
    kind = ["plain", "texture", "noise"][int(rng.choice(3, p=np.asarray(cfg.background_probs)))]
    info: dict = {"kind": kind, "level": level, "tint": tuple(int(t) for t in tint)}
    if kind == "texture":
        contrast = int(rng.integers(cfg.texture_contrast[0], cfg.texture_contrast[1] + 1))
        pattern = ["stripes", "checker", "grid"][int(rng.integers(3))]
        period = int(rng.integers(4, 11))
        yy, xx = np.mgrid[0:n, 0:n]
        if pattern == "stripes":
            ang = rng.uniform(0, math.pi)
            t = (np.cos(ang) * xx + np.sin(ang) * yy) / period
            tex = np.where(np.floor(t) % 2 == 0, 1.0, -1.0)
        elif pattern == "checker":
            tex = np.where(((xx // period) + (yy // period)) % 2 == 0, 1.0, -1.0)
        else:
            tex = np.where((xx % period == 0) | (yy % period == 0), 1.0, -0.2)
        img += contrast * tex[..., None]
        info.update(pattern=pattern, period=period, contrast=contrast)
    elif kind == "noise":
        std = float(rng.uniform(*cfg.noise_std))
        img += rng.normal(0.0, std, size=(n, n, 1 if rng.random() < 0.5 else 3)).astype(np.float32)
        info.update(noise_std=std)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), info


def render_objects(objects: Sequence[SceneObject], background: np.ndarray,
                   image_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint ``objects`` in order over ``background`` (H, W, 3 uint8).

    Returns ``(image, visible_masks, full_masks)``; updates each object's ``area``/``visible_area``.
    """
    n = image_size or background.shape[0]
    img = background.copy()
    full = np.zeros((len(objects), n, n), dtype=bool)
    for i, o in enumerate(objects):
        full[i] = shape_mask(o.shape, o.cx, o.cy, o.radius, n)
    visible = full.copy()
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            visible[i] &= ~full[j]
    for i, o in enumerate(objects):
        img[full[i]] = np.asarray(o.rgb, dtype=np.uint8)
        o.area = int(full[i].sum())
        o.visible_area = int(visible[i].sum())
    return img, visible, full


# ----------------------------------------------------------------------------------------------
# sampling


def _jittered_rgb(rng: np.random.Generator, colour: str, jitter: int) -> tuple[int, int, int]:
    base = np.asarray(COLOUR_RGB[colour], dtype=np.int64)
    rgb = np.clip(base + rng.integers(-jitter, jitter + 1, size=3), 0, 255)
    return tuple(int(c) for c in rgb)


def _place(rng: np.random.Generator, cfg: SceneConfig, shape: str, size: str,
           full: list[np.ndarray], visible: list[np.ndarray]
           ) -> Optional[tuple[float, float, float, np.ndarray]]:
    """Find a position for a new (topmost) object that keeps every object's occlusion bounded.

    ``full``/``visible`` are the full and currently visible masks of the objects placed so far.
    """
    n = cfg.image_size
    lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
    for _ in range(cfg.placement_tries):
        r = float(rng.uniform(lo, hi))
        margin = 1.2 * r + 1.0
        cx = float(rng.uniform(margin, n - margin))
        cy = float(rng.uniform(margin, n - margin))
        m = shape_mask(shape, cx, cy, r, n)
        ok = True
        for f, v in zip(full, visible):
            lost = int(f.sum()) - int((v & ~m).sum())
            if lost > cfg.max_occlusion * f.sum():
                ok = False
                break
        if ok:
            return cx, cy, r, m
    return None


def generate_scene(
    seed: int,
    *,
    n_objects: Optional[int] = None,
    objects: Optional[Sequence[dict]] = None,
    config: SceneConfig = SceneConfig(),
    with_captions: bool = True,
    min_objects: int = 1,
    max_objects: int = 6,
) -> Scene:
    """Generate the scene for ``seed`` (deterministic).

    ``n_objects`` fixes the number of objects (1-6); otherwise it is drawn uniformly from
    ``[min_objects, max_objects]``. ``objects`` optionally fixes some attributes of each object: a
    list of dicts with any of ``shape``, ``colour``, ``size`` (missing keys are drawn at random), whose
    length sets the number of objects. Positions are always drawn so that no object loses more than
    ``config.max_occlusion`` of its pixels to later objects; when a large object does not fit, it is
    made small, and as a last resort up to half of an object may be covered (so a requested count is
    always honoured).
    """
    rng = np.random.default_rng(seed)
    if objects is not None:
        specs = [dict(o) for o in objects]
    else:
        n = int(n_objects) if n_objects is not None else int(rng.integers(min_objects, max_objects + 1))
        specs = [{} for _ in range(n)]
    if not 1 <= len(specs) <= 6:
        raise ValueError(f"a scene has 1-6 objects, got {len(specs)}")
    background, bg_info = _background(rng, config)

    objs: list[SceneObject] = []
    placed: list[np.ndarray] = []
    visible_so_far: list[np.ndarray] = []
    for spec in specs:
        shape = spec.get("shape") or SHAPES[int(rng.integers(len(SHAPES)))]
        colour = spec.get("colour") or COLOURS[int(rng.integers(len(COLOURS)))]
        size = spec.get("size") or SIZES[int(rng.integers(len(SIZES)))]
        if shape not in SHAPES or colour not in COLOURS or size not in SIZES:
            raise ValueError(f"bad object spec {spec}")
        rgb = _jittered_rgb(rng, colour, config.colour_jitter)
        res = _place(rng, config, shape, size, placed, visible_so_far)
        if res is None and size == "large" and "size" not in spec:
            size = "small"
            res = _place(rng, config, shape, size, placed, visible_so_far)
        if res is None:
            # very crowded: allow up to half of an object to be covered rather than fail
            relaxed = dataclasses.replace(config, max_occlusion=0.5, placement_tries=200)
            res = _place(rng, relaxed, shape, size, placed, visible_so_far)
        if res is None:
            raise RuntimeError(f"could not place object {len(objs)} in scene {seed}")
        cx, cy, r, m = res
        objs.append(SceneObject(shape=shape, colour=colour, size=size, cx=cx, cy=cy, radius=r, rgb=rgb))
        visible_so_far = [v & ~m for v in visible_so_far] + [m]
        placed.append(m)

    img, visible, full = render_objects(objs, background, config.image_size)
    scene = Scene(seed=int(seed), image=Image.fromarray(img, "RGB"), masks=visible, full_masks=full,
                  objects=objs, background=bg_info, background_array=background)
    if with_captions:
        describe_scene(scene, np.random.default_rng([int(seed), 1]))
    return scene
