"""The caption grammar: captions agree with the scene, hard negatives are false."""

import numpy as np
import pytest

from gradeclip_utils.synthetic import SceneObject, generate_scene
from gradeclip_utils.synthetic.captions import (Caption, NounPhrase, caption_holds, class_prompts,
                                                hard_negatives, parse_caption)
from gradeclip_utils.synthetic.dataset import TRAIN_MIX, make_example, truth_matrix


def obj(shape, colour, cx=32.0, cy=32.0, size="large"):
    return SceneObject(shape=shape, colour=colour, size=size, cx=cx, cy=cy, radius=10.0, rgb=(0, 0, 0))


SCENE = [obj("circle", "red", 10, 10), obj("square", "blue", 50, 12, "small"),
         obj("triangle", "green", 20, 50), obj("triangle", "green", 40, 50), obj("triangle", "green", 55, 55)]


@pytest.mark.parametrize("text, truth", [
    ("a red circle", True),
    ("a blue circle", False),
    ("a small blue square", True),
    ("a large blue square", False),
    ("a red circle and a blue square", True),
    ("a blue circle and a red square", False),                   # swapped binding
    ("three green triangles", True),
    ("two green triangles", False),                              # counts are exact
    ("four green triangles", False),
    ("a red circle, a blue square and three green triangles", True),
    ("a circle left of a square", True),
    ("a circle right of a square", False),
    ("a red circle above a green triangle", True),
    ("a green triangle above a red circle", False),
    ("a square above a circle", False),
    ("an orange star", False),
    ("a shape", True),
    ("two shapes", False),
    ("five shapes", True),
    ("a green triangle and a green triangle", True),             # two distinct objects exist
    ("a red circle and a red circle", False),                    # only one red circle
])
def test_truth_conditions(text, truth):
    cap = parse_caption(text)
    assert cap.text == text
    assert caption_holds(cap, SCENE) is truth
    assert caption_holds(text, SCENE) is truth


def test_rendering():
    assert NounPhrase("circle", "red").text == "a red circle"
    assert NounPhrase("circle", "orange").text == "an orange circle"
    assert NounPhrase("cross", "green", count=3).text == "three green crosses"
    assert NounPhrase("star", size="small").text == "a small star"
    assert NounPhrase().text == "a shape"
    c = Caption((NounPhrase("star"), NounPhrase("square")), relation="left of")
    assert c.text == "a star left of a square"
    with pytest.raises(ValueError):
        parse_caption("a red")
    with pytest.raises(ValueError):
        parse_caption("three red circle")
    with pytest.raises(ValueError):
        NounPhrase("hexagon")


def test_hard_negatives_are_minimal_edits_and_false():
    pair = parse_caption("a red circle and a blue square")
    assert [c.text for c in hard_negatives(pair, SCENE, "binding")] == ["a blue circle and a red square"]
    colours = hard_negatives(parse_caption("a red circle"), SCENE, "colour")
    assert colours and all(c.text.endswith(" circle") and not c.holds(SCENE) for c in colours)
    counts = [c.text for c in hard_negatives(parse_caption("three green triangles"), SCENE, "count")]
    assert "two green triangles" in counts and "three green triangles" not in counts
    assert [c.text for c in hard_negatives(parse_caption("a circle left of a square"), SCENE, "relation")] \
        == ["a circle right of a square"]
    # a "negative" that would be true is never returned
    assert hard_negatives(parse_caption("a green triangle"), SCENE + [obj("star", "green")], "shape")
    assert all(not c.holds(SCENE) for c in hard_negatives(parse_caption("a green triangle"), SCENE, "shape"))


def test_generated_captions_agree_with_their_scene():
    kinds, neg_kinds = set(), set()
    for seed in range(150):
        s = generate_scene(seed, n_objects=1 + seed % 6)
        assert "full" in s.captions
        for kind, cap in s.captions.items():
            kinds.add(kind)
            assert cap.holds(s), (seed, kind, cap.text)
            assert parse_caption(cap.text).text == cap.text
            for t in cap.targets:   # the caption names its target objects correctly
                o = s.objects[t]
                assert any(p.matches(o) for p in cap.phrases)
        for kind, cap in s.negatives.items():
            neg_kinds.add(kind)
            assert not cap.holds(s), (seed, kind, cap.text)
            assert not caption_holds(cap.text, s.objects)
        full = s.captions["full"]
        assert sorted(full.targets) == list(range(s.n_objects))
        if "object" in s.captions:
            (t,) = s.captions["object"].targets
            same = [o for o in s.objects if (o.colour, o.shape) == (s.objects[t].colour, s.objects[t].shape)]
            assert len(same) == 1   # an object caption names a unique object
    assert kinds == {"full", "object", "pair", "relation", "count"}
    assert neg_kinds == {"colour", "shape", "count", "binding", "relation"}


def test_training_examples_and_truth_matrix():
    exs = [make_example(i) for i in range(120)]
    assert {e.kind for e in exs} == set(TRAIN_MIX)
    caps = [e.caption for e in exs] + [n for e in exs for n in e.negatives]
    fast = truth_matrix([e.scene for e in exs], caps)
    slow = np.array([[caption_holds(c, e.scene) for c in caps] for e in exs])
    np.testing.assert_array_equal(fast, slow)
    assert fast[np.arange(len(exs)), np.arange(len(exs))].all()
    for e in exs:
        assert e.negatives and e.caption.holds(e.scene.objects)
        assert all(not n.holds(e.scene.objects) for n in e.negatives)
        assert len({n.text for n in e.negatives}) == len(e.negatives)
    counts = [e for e in exs if e.kind == "count"]
    assert any(p.count for e in counts for p in e.caption.phrases)


def test_class_prompts():
    prompts, labels = class_prompts()
    assert len(prompts) == len(set(prompts)) == len(labels) == 35
    assert "a red circle" in prompts and "an orange star" in prompts
    for p, (c, s) in zip(prompts, labels):
        assert parse_caption(p).phrases[0] == NounPhrase(s, c)
