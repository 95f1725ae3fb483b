"""Training and evaluation data built from :func:`generate_scene`.

Every example is a pure function of an integer scene id: training uses ids ``[0, HELDOUT_SEED_START)``
and every evaluation uses ids from ``HELDOUT_SEED_START`` on, so held-out scenes are never seen in
training. A training example is a scene of one *kind* (see :data:`TRAIN_MIX`), one true caption and one
hard negative caption; :func:`truth_matrix` gives the exact truth of every caption of a batch for every
scene of the batch, so the contrastive loss can treat every true pair as a positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .captions import (Caption, NounPhrase, binding_caption, caption_holds, count_caption,
                       full_caption, hard_negatives, object_caption, relation_caption, unique_objects)
from .scenes import COLOURS, SHAPES, SIZES, Scene, SceneConfig, SceneObject, generate_scene

__all__ = [
    "HELDOUT_SEED_START",
    "TRAIN_MIX",
    "Example",
    "make_example",
    "SyntheticBatches",
    "truth_matrix",
    "images_to_tensor",
]

#: first scene id of the held-out range; training never uses ids at or above it
HELDOUT_SEED_START = 1_000_000_000

#: scene/caption kinds of the training stream and their probabilities
#: (the committed model's mix: a larger share of captions naming one object of a crowded scene ("partial")
#: gave better-localised Grad-ECLIP maps in the runs data/synthetic_clip/MODEL_CARD.md describes; count and
#: relation captions, which a model of this size barely learns, are kept rare.)
TRAIN_MIX: dict[str, float] = {
    "single": 0.25,    # one object, "a red circle" (sometimes with its size, or only its shape/colour)
    "partial": 0.52,   # 2-6 objects, caption naming one of them
    "full": 0.08,      # 1-4 objects, every object named
    "pair": 0.09,      # 2-4 objects, two of them named ("a red circle and a blue square")
    "count": 0.03,     # a group of 2-4 identical colour+shape objects + distractors, "three red stars"
    "relation": 0.03,  # 2-4 objects, "a red star left of a blue square"
}

#: hard-negative kinds tried for each example kind (in random order; one negative per kind found)
_NEG_KINDS = {"single": ("colour", "shape"), "partial": ("colour", "shape"), "full": ("binding", "shape"),
              "pair": ("binding", "shape"), "count": ("count", "shape"), "relation": ("relation", "shape")}


@dataclass
class Example:
    scene: Scene
    kind: str
    caption: Caption
    #: hard negatives (false one-edit variants of ``caption``), at most one per kind
    negatives: list[Caption]

    @property
    def negative(self) -> Optional[Caption]:
        return self.negatives[0] if self.negatives else None


def _scene_for_kind(seed: int, kind: str, rng: np.random.Generator, config: SceneConfig) -> Scene:
    if kind == "single":
        return generate_scene(seed, n_objects=1, config=config, with_captions=False)
    if kind == "partial":
        return generate_scene(seed, n_objects=int(rng.integers(2, 7)), config=config, with_captions=False)
    if kind == "full":
        return generate_scene(seed, n_objects=int(rng.integers(1, 5)), config=config, with_captions=False)
    if kind in ("pair", "relation"):
        return generate_scene(seed, n_objects=int(rng.integers(2, 5)), config=config, with_captions=False)
    if kind == "count":
        k = int(rng.integers(2, 5))
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        specs = [{"colour": colour, "shape": shape} for _ in range(k)]
        specs += [{} for _ in range(int(rng.integers(0, min(3, 7 - k))))]
        order = rng.permutation(len(specs))
        return generate_scene(seed, objects=[specs[i] for i in order], config=config, with_captions=False)
    raise ValueError(f"unknown example kind {kind!r}")


def make_example(index: int, mix: Optional[dict[str, float]] = None, config: SceneConfig = SceneConfig(),
                 kind: Optional[str] = None) -> Example:
    """The training example with scene id ``index`` (deterministic)."""
    mix = mix or TRAIN_MIX
    rng = np.random.default_rng([int(index), 7])
    if kind is None:
        kinds = list(mix)
        p = np.asarray([mix[k] for k in kinds], dtype=float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    scene = _scene_for_kind(int(index), kind, rng, config)
    objs = scene.objects
    cap: Optional[Caption] = None
    if kind == "single":
        u = rng.random()
        if u < 0.1:     # only the shape ("a circle") or only the colour ("a red shape")
            o = objs[0]
            cap = Caption((NounPhrase(shape=o.shape),), targets=(0,)) if u < 0.05 else \
                Caption((NounPhrase(colour=o.colour),), targets=(0,))
        else:
            cap = object_caption(objs, 0, with_size=bool(rng.random() < 0.2))
    elif kind == "partial":
        uniq = unique_objects(objs)
        if uniq:
            cap = object_caption(objs, uniq[int(rng.integers(len(uniq)))], with_size=bool(rng.random() < 0.15))
    elif kind == "full":
        cap = full_caption(objs, rng)
    elif kind == "pair":
        cap = binding_caption(objs, rng)
    elif kind == "count":
        cap = count_caption(objs, rng)
    elif kind == "relation":
        cap = relation_caption(objs, rng)
    if cap is None:  # the scene does not support the kind: describe it fully
        cap = full_caption(objs, rng)
    negatives = []
    kinds = _NEG_KINDS[kind]
    for k in rng.permutation(len(kinds)):
        cands = hard_negatives(cap, objs, kinds[k])
        if cands:
            negatives.append(cands[int(rng.integers(len(cands)))])
    return Example(scene=scene, kind=kind, caption=cap, negatives=negatives)


# ----------------------------------------------------------------------------------------------
# truth of many captions over many scenes

_CI = {c: i for i, c in enumerate(COLOURS)}
_SI = {s: i for i, s in enumerate(SHAPES)}
_ZI = {z: i for i, z in enumerate(SIZES)}


def _count_tensor(scenes_objects: Sequence[Sequence[SceneObject]]) -> np.ndarray:
    C = np.zeros((len(scenes_objects), len(COLOURS), len(SHAPES), len(SIZES)), dtype=np.int32)
    for b, objs in enumerate(scenes_objects):
        for o in objs:
            C[b, _CI[o.colour], _SI[o.shape], _ZI[o.size]] += 1
    return C


def _np_slice(p: NounPhrase):
    return (slice(None),
            slice(None) if p.colour is None else _CI[p.colour],
            slice(None) if p.shape is None else _SI[p.shape],
            slice(None) if p.size is None else _ZI[p.size])


def _disjoint(a: NounPhrase, b: NounPhrase) -> bool:
    return any(x is not None and y is not None and x != y
               for x, y in ((a.colour, b.colour), (a.shape, b.shape), (a.size, b.size)))


def truth_matrix(scenes_objects: Sequence[Sequence[SceneObject] | Scene],
                 captions: Sequence[Caption]) -> np.ndarray:
    """Boolean (n_scenes, n_captions): whether caption j is true of scene i (exact, vectorised).

    Equal to ``caption_holds(captions[j], scenes[i])`` for every pair (tested).
    """
    objs = [s.objects if isinstance(s, Scene) else s for s in scenes_objects]
    C = _count_tensor(objs)
    out = np.zeros((len(objs), len(captions)), dtype=bool)
    cache: dict[str, np.ndarray] = {}
    for j, cap in enumerate(captions):
        key = cap.text
        if key in cache:
            out[:, j] = cache[key]
            continue
        singles = [p for p in cap.phrases if p.count is None]
        fast = cap.relation is None and all(_disjoint(a, b) for k, a in enumerate(singles)
                                             for b in singles[k + 1:])
        if fast:
            col = np.ones(len(objs), dtype=bool)
            for p in cap.phrases:
                n = C[_np_slice(p)].reshape(len(objs), -1).sum(1)
                col &= (n == p.count) if p.count is not None else (n >= 1)
        else:
            col = np.array([caption_holds(cap, o) for o in objs], dtype=bool)
        cache[key] = col
        out[:, j] = col
    return out


# ----------------------------------------------------------------------------------------------
# batches


def images_to_tensor(images: Sequence, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack PIL images / uint8 arrays (H, W, 3) into a normalised float tensor (B, 3, H, W).

    Identical to open_clip's preprocessing of the model's own image size (resize and crop are the
    identity there): ``(x / 255 - mean) / std``.
    """
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


class SyntheticBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item ``i`` is the whole training batch ``i`` (scene ids
    ``start + i * batch_size ...``): images (uint8, B x 3 x H x W), the B true captions followed by
    ``negatives`` x B hard negatives (negative slot k of scene b holds its k-th hard negative, or its
    own true caption when it has fewer), and the truth matrix (B x (1 + negatives) B) of every
    caption for every scene. Use it with ``DataLoader(batch_size=None)``.
    """

    def __init__(self, n_batches: int, batch_size: int, start: int = 0,
                 mix: Optional[dict[str, float]] = None, config: SceneConfig = SceneConfig(),
                 negatives: int = 2):
        if start + n_batches * batch_size > HELDOUT_SEED_START:
            raise ValueError("training scene ids must stay below HELDOUT_SEED_START")
        self.n_batches, self.batch_size, self.start = n_batches, batch_size, start
        self.mix, self.config, self.negatives = mix, config, int(negatives)

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n_batches:
            raise IndexError(i)
        ids = range(self.start + i * self.batch_size, self.start + (i + 1) * self.batch_size)
        exs = [make_example(k, self.mix, self.config) for k in ids]
        caps = [e.caption for e in exs]
        for k in range(self.negatives):
            caps += [e.negatives[k] if k < len(e.negatives) else e.caption for e in exs]
        truth = truth_matrix([e.scene.objects for e in exs], caps)
        imgs = np.stack([e.scene.array for e in exs]).transpose(0, 3, 1, 2)
        return {
            "images": torch.from_numpy(np.ascontiguousarray(imgs)),
            "texts": [c.text for c in caps],
            "truth": torch.from_numpy(truth),
            "kinds": [e.kind for e in exs],
        }
