"""A small caption grammar over synthetic scenes, with exact truth conditions.

Grammar (``NP`` = noun phrase)::

    caption  := NP | NP " and " NP | NP ", " NP ... " and " NP | NP " " REL " " NP
    NP       := ("a" | "an") [size] [colour] noun       -- at least one such object
              | NUMBER [size] [colour] nouns             -- exactly NUMBER such objects (2-6)
    noun     := circle | square | triangle | star | cross | shape        (plural: ...s, crosses)
    REL      := "left of" | "right of" | "above" | "below"

Examples: ``a red circle``, ``a red circle and a blue square``, ``three green triangles``,
``a star left of a square``, ``a small white cross``.

Truth (:meth:`Caption.holds`): a singular NP needs a matching object; the singular NPs of a list
need *distinct* objects; a counted NP needs exactly that many matching objects; ``A REL B`` needs
two distinct objects a, b matching A and B with a's centre strictly left of (right of, above,
below) b's centre. Hard negatives are produced by editing a true caption (wrong colour, wrong
shape, wrong count, swapped attribute binding, flipped relation) and are kept only if
:meth:`Caption.holds` says they are false for the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .world import COLOURS, SHAPES, SIZES, Scene, SceneObject

__all__ = [
    "NounPhrase",
    "Caption",
    "RELATIONS",
    "NUMBER_WORDS",
    "parse_caption",
    "caption_holds",
    "describe_scene",
    "full_caption",
    "object_caption",
    "count_caption",
    "relation_caption",
    "hard_negatives",
    "NEGATIVE_KINDS",
    "class_prompts",
]

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_WORD_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()}
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "shape": "shapes"}
_SINGULAR = {p: s for s, p in _PLURAL.items()}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NEGATIVE_KINDS: tuple[str, ...] = ("colour", "shape", "count", "binding", "relation")


@dataclass(frozen=True)
class NounPhrase:
    """``[count] [size] [colour] shape``; ``None`` leaves an attribute unspecified."""

    shape: Optional[str] = None
    colour: Optional[str] = None
    size: Optional[str] = None
    count: Optional[int] = None

    def __post_init__(self):
        if self.shape is not None and self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if self.count is not None and self.count not in NUMBER_WORDS:
            raise ValueError(f"count must be 2-6 or None, got {self.count!r}")

    def matches(self, obj: SceneObject) -> bool:
        return ((self.shape is None or obj.shape == self.shape)
                and (self.colour is None or obj.colour == self.colour)
                and (self.size is None or obj.size == self.size))

    @property
    def text(self) -> str:
        words = [w for w in (self.size, self.colour) if w]
        noun = self.shape or "shape"
        if self.count is None:
            first = (words[0] if words else noun)
            article = "an" if first[0] in "aeiou" else "a"
            return " ".join([article, *words, noun])
        return " ".join([NUMBER_WORDS[self.count], *words, _PLURAL[noun]])


@dataclass(frozen=True)
class Caption:
    """A caption: a list of noun phrases, or two noun phrases joined by a spatial relation.

    ``targets`` (not part of equality) records the indices of the scene objects the caption was
    written about, when it was generated from a scene.
    """

    phrases: tuple[NounPhrase, ...]
    relation: Optional[str] = None
    targets: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self):
        if not self.phrases:
            raise ValueError("a caption needs at least one noun phrase")
        if self.relation is not None:
            if self.relation not in RELATIONS:
                raise ValueError(f"unknown relation {self.relation!r}")
            if len(self.phrases) != 2 or any(p.count is not None for p in self.phrases):
                raise ValueError("a relation joins exactly two singular noun phrases")

    @property
    def text(self) -> str:
        ps = [p.text for p in self.phrases]
        if self.relation is not None:
            return f"{ps[0]} {self.relation} {ps[1]}"
        if len(ps) == 1:
            return ps[0]
        return ", ".join(ps[:-1]) + " and " + ps[-1]

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.text

    def holds(self, objects: Sequence[SceneObject]) -> bool:
        return caption_holds(self, objects)


# ----------------------------------------------------------------------------------------------
# truth


def _relation_true(rel: str, a: SceneObject, b: SceneObject) -> bool:
    if rel == "left of":
        return a.cx < b.cx
    if rel == "right of":
        return a.cx > b.cx
    if rel == "above":
        return a.cy < b.cy
    if rel == "below":
        return a.cy > b.cy
    raise ValueError(rel)


def _assign(phrases: Sequence[NounPhrase], objects: Sequence[SceneObject], used: set) -> bool:
    if not phrases:
        return True
    head, rest = phrases[0], phrases[1:]
    for i, o in enumerate(objects):
        if i not in used and head.matches(o):
            if _assign(rest, objects, used | {i}):
                return True
    return False


def caption_holds(caption: Caption | str, objects: Sequence[SceneObject] | Scene) -> bool:
    """Whether ``caption`` (a :class:`Caption` or a string of the grammar) is true of the objects."""
    if isinstance(caption, str):
        caption = parse_caption(caption)
    if isinstance(objects, Scene):
        objects = objects.objects
    if caption.relation is not None:
        A, B = caption.phrases
        return any(i != j and A.matches(a) and B.matches(b) and _relation_true(caption.relation, a, b)
                   for i, a in enumerate(objects) for j, b in enumerate(objects))
    singles = [p for p in caption.phrases if p.count is None]
    for p in caption.phrases:
        if p.count is not None and sum(p.matches(o) for o in objects) != p.count:
            return False
    return _assign(singles, objects, set())


# ----------------------------------------------------------------------------------------------
# parsing

_NP_RE = re.compile(
    r"^(?P<det>a|an|two|three|four|five|six)"
    r"(?: (?P<size>small|large))?"
    rf"(?: (?P<colour>{'|'.join(COLOURS)}))?"
    r" (?P<noun>\w+)$"
)


def _parse_np(text: str) -> NounPhrase:
    m = _NP_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a noun phrase of the grammar: {text!r}")
    det, noun = m["det"], m["noun"]
    if det in ("a", "an"):
        if noun not in _PLURAL:
            raise ValueError(f"unknown noun {noun!r} in {text!r}")
        count = None
        shape = None if noun == "shape" else noun
    else:
        if noun not in _SINGULAR:
            raise ValueError(f"expected a plural noun after {det!r} in {text!r}")
        count = _WORD_NUMBERS[det]
        shape = None if noun == "shapes" else _SINGULAR[noun]
    np_ = NounPhrase(shape=shape, colour=m["colour"], size=m["size"], count=count)
    if np_.text != text.strip():
        raise ValueError(f"{text!r} is not in canonical form (expected {np_.text!r})")
    return np_


def parse_caption(text: str) -> Caption:
    """Parse a caption of the grammar (the inverse of :attr:`Caption.text`)."""
    t = " ".join(text.strip().rstrip(".").split())
    for rel in RELATIONS:
        key = f" {rel} "
        if key in t:
            a, b = t.split(key, 1)
            return Caption((_parse_np(a), _parse_np(b)), relation=rel)
    if " and " in t:
        head, last = t.rsplit(" and ", 1)
        parts = [p for p in head.split(", ")] + [last]
    else:
        parts = [t]
    return Caption(tuple(_parse_np(p) for p in parts))


# ----------------------------------------------------------------------------------------------
# generation of true captions


def _np_for(obj: SceneObject, with_size: bool = False, with_colour: bool = True,
            with_shape: bool = True) -> NounPhrase:
    return NounPhrase(shape=obj.shape if with_shape else None, colour=obj.colour if with_colour else None,
                      size=obj.size if with_size else None)


def _groups(objects: Sequence[SceneObject]) -> dict[tuple[str, str], list[int]]:
    g: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(objects):
        g.setdefault((o.colour, o.shape), []).append(i)
    return g


def full_caption(objects: Sequence[SceneObject], rng: Optional[np.random.Generator] = None) -> Caption:
    """Describe every object (identical colour+shape objects grouped with a count), in random order."""
    groups = list(_groups(objects).items())
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    phrases = []
    targets: list[int] = []
    for (colour, shape), idx in groups:
        phrases.append(NounPhrase(shape=shape, colour=colour, count=len(idx) if len(idx) > 1 else None))
        targets += idx
    return Caption(tuple(phrases), targets=tuple(targets))


def unique_objects(objects: Sequence[SceneObject]) -> list[int]:
    """Indices of the objects whose colour+shape is unique in the scene (nameable without ambiguity)."""
    return [idx[0] for idx in _groups(objects).values() if len(idx) == 1]


def object_caption(objects: Sequence[SceneObject], index: int, with_size: bool = False) -> Caption:
    """``a red circle`` naming object ``index`` (its colour and shape, optionally its size)."""
    return Caption((_np_for(objects[index], with_size=with_size),), targets=(index,))


def count_caption(objects: Sequence[SceneObject], rng: np.random.Generator) -> Optional[Caption]:
    """``three green triangles`` for a colour+shape group of 2+ objects, if the scene has one."""
    groups = [(k, v) for k, v in _groups(objects).items() if len(v) >= 2]
    if not groups:
        return None
    (colour, shape), idx = groups[int(rng.integers(len(groups)))]
    return Caption((NounPhrase(shape=shape, colour=colour, count=len(idx)),), targets=tuple(idx))


def relation_caption(objects: Sequence[SceneObject], rng: np.random.Generator, min_gap: float = 8.0,
                     with_colour: Optional[bool] = None) -> Optional[Caption]:
    """``a red star left of a blue square`` for a pair of uniquely nameable objects that are clearly
    apart (centres at least ``min_gap`` pixels apart along the relation's axis)."""
    uniq = unique_objects(objects)
    pairs = [(i, j) for i in uniq for j in uniq if i != j]
    if not pairs:
        return None
    order = rng.permutation(len(pairs))
    for k in order:
        i, j = pairs[k]
        a, b = objects[i], objects[j]
        rels = []
        if b.cx - a.cx >= min_gap:
            rels.append("left of")
        if a.cx - b.cx >= min_gap:
            rels.append("right of")
        if b.cy - a.cy >= min_gap:
            rels.append("above")
        if a.cy - b.cy >= min_gap:
            rels.append("below")
        if not rels:
            continue
        rel = rels[int(rng.integers(len(rels)))]
        colour = bool(rng.random() < 0.5) if with_colour is None else with_colour
        A, B = _np_for(a, with_colour=colour), _np_for(b, with_colour=colour)
        cap = Caption((A, B), relation=rel, targets=(i, j))
        if cap.holds(objects) and not replace(cap, relation=_FLIP[rel]).holds(objects):
            return cap
    return None


# ----------------------------------------------------------------------------------------------
# hard negatives


def _false(c: Caption, objects) -> bool:
    return not c.holds(objects)


def hard_negatives(caption: Caption, objects: Sequence[SceneObject], kind: str) -> list[Caption]:
    """All false captions that differ from ``caption`` in one thing of ``kind``.

    ``colour``/``shape``: one noun phrase's colour (shape) replaced by another; ``count``: the count
    of a counted phrase changed (2-6), or a singular phrase made ``two ...``; ``binding``: the colours of
    two phrases swapped (``a red circle and a blue square`` -> ``a blue circle and a red square``);
    ``relation``: the relation flipped. Only captions that are false for ``objects`` are returned.
    """
    out: list[Caption] = []
    ps = caption.phrases
    if kind in ("colour", "shape"):
        attr, values = ("colour", COLOURS) if kind == "colour" else ("shape", SHAPES)
        for k, p in enumerate(ps):
            if getattr(p, attr) is None:
                continue
            for v in values:
                if v == getattr(p, attr):
                    continue
                new = ps[:k] + (replace(p, **{attr: v}),) + ps[k + 1:]
                # phrase lists must stay free of duplicates
                if caption.relation is None and len({(q.colour, q.shape, q.size) for q in new}) < len(new):
                    continue
                out.append(replace(caption, phrases=new))
    elif kind == "count":
        if caption.relation is None:
            for k, p in enumerate(ps):
                counts = [c for c in NUMBER_WORDS if c != p.count] if p.count is not None else [2]
                for c in counts:
                    out.append(replace(caption, phrases=ps[:k] + (replace(p, count=c),) + ps[k + 1:]))
    elif kind == "binding":
        for k in range(len(ps)):
            for m in range(k + 1, len(ps)):
                a, b = ps[k], ps[m]
                if a.colour is None or b.colour is None or a.colour == b.colour or a.shape == b.shape:
                    continue
                new = list(ps)
                new[k], new[m] = replace(a, colour=b.colour), replace(b, colour=a.colour)
                if len({(p.colour, p.shape, p.size) for p in new}) < len(new):
                    continue
                out.append(replace(caption, phrases=tuple(new)))
    elif kind == "relation":
        if caption.relation is not None:
            out.append(replace(caption, relation=_FLIP[caption.relation]))
    else:
        raise ValueError(f"unknown negative kind {kind!r}; known: {NEGATIVE_KINDS}")
    seen, uniq = set(), []
    for c in out:
        if c.text not in seen and _false(c, objects):
            seen.add(c.text)
            uniq.append(c)
    return uniq


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))] if items else None


def binding_caption(objects: Sequence[SceneObject], rng: np.random.Generator) -> Optional[Caption]:
    """``a red circle and a blue square`` about two nameable objects whose colour swap is false."""
    uniq = unique_objects(objects)
    pairs = [(i, j) for i in uniq for j in uniq if i < j
             and objects[i].colour != objects[j].colour and objects[i].shape != objects[j].shape]
    for k in rng.permutation(len(pairs)) if pairs else []:
        i, j = pairs[k]
        cap = Caption((_np_for(objects[i]), _np_for(objects[j])), targets=(i, j))
        if hard_negatives(cap, objects, "binding"):
            return cap
    return None


def describe_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """Fill ``scene.captions`` (kind -> true :class:`Caption`) and ``scene.negatives``
    (kind -> false :class:`Caption` obtained by a minimal edit of a true one).

    Caption kinds: ``full`` (every object), ``object`` (one nameable object, the first in random
    order), ``count`` (a colour+shape group of 2+), ``pair`` (two nameable objects, with a false binding
    swap), ``relation``. Kinds that do not apply to the scene are absent.
    """
    objs = scene.objects
    caps: dict[str, Caption] = {"full": full_caption(objs, rng)}
    uniq = unique_objects(objs)
    if uniq:
        caps["object"] = object_caption(objs, _pick(rng, uniq))
    c = count_caption(objs, rng)
    if c is not None:
        caps["count"] = c
    c = binding_caption(objs, rng)
    if c is not None:
        caps["pair"] = c
    c = relation_caption(objs, rng)
    if c is not None:
        caps["relation"] = c
    negs: dict[str, Caption] = {}
    sources = {"colour": "object", "shape": "object", "count": "count", "binding": "pair",
               "relation": "relation"}
    for kind, src in sources.items():
        base = caps.get(src) or (caps.get("object") if kind == "count" else None)
        if base is None:
            continue
        cands = hard_negatives(base, objs, kind)
        if cands:
            negs[kind] = _pick(rng, cands)
    scene.captions = caps
    scene.negatives = negs
    return scene


def class_prompts(template: str = "a {colour} {shape}") -> tuple[list[str], list[tuple[str, str]]]:
    """Zero-shot prompts for every colour x shape class, and the (colour, shape) label of each."""
    labels = [(c, s) for c in COLOURS for s in SHAPES]
    prompts = []
    for c, s in labels:
        text = template.format(colour=c, shape=s)
        if text.startswith("a ") and c[0] in "aeiou":
            text = "an " + text[2:]
        prompts.append(text)
    return prompts, labels
