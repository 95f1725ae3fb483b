"""A method is one file: each registered method's ``MethodSpec`` is complete and agrees with its functions;
the evaluation, the explorers and the studies take their defaults and options from the specs; a method
registered here, in a test file, is picked up by all of them without editing any other file; a refusal is
built from the method's requirements and the adapter's declared captures."""

from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch

from support import families as fam
import gradeclip_utils as ge
from gradeclip_utils import evaluation as ev
from gradeclip_utils.adapters import CAPTURES, ImageTower, UnsupportedMethodError
from gradeclip_utils.inputs import RESOLUTIONS
from gradeclip_utils.methods import (MapOutput, MethodSpec, cosine_scores, get_spec, list_methods, method_specs,
                                     refusal, register, unregister)
from gradeclip_utils.methods.clip_surgery import AUTHORS_CLASS_SET
from gradeclip_utils.methods.registry import SETTINGS
from gradeclip_utils.studies import methods as method_study
from gradeclip_utils.synthetic import generate_scene
from gradeclip_utils import widgets
from support.blip import match_head_methods

PIXELS = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(11))
PROMPTS = ["a red circle", "a blue square"]


def keyword_defaults(fn) -> tuple[dict, bool]:
    """A function's own options with their defaults (not the settings layers, mode and qk), and whether it
    passes further keyword options on (``**options``; ``**_`` swallows them)."""
    parameters = inspect.signature(fn).parameters.values()
    own = {p.name: p.default for p in parameters
           if p.default is not inspect.Parameter.empty and p.name not in SETTINGS}
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_" for p in parameters)
    return own, forwards


@pytest.mark.parametrize("spec", method_specs(), ids=lambda spec: spec.name)
def test_every_registered_method_has_a_complete_spec(spec):
    assert get_spec(spec.name) is spec
    assert spec.image is not None or spec.text is not None
    module = sys.modules[(spec.image or spec.text).__module__]
    assert any(value is spec for value in vars(module).values()), "declared in the method's own file"
    assert set(spec.requires) | set(spec.text_requires) <= set(CAPTURES)
    if spec.image is not None:
        own, forwards = keyword_defaults(spec.image)
        if not forwards:  # the options it declares are its function's, with the same defaults
            assert dict(spec.options) == own
        assert spec.name in list_methods()["image"]
    if spec.text is not None:
        own, forwards = keyword_defaults(spec.text)
        assert all(spec.options[name] == default for name, default in own.items())
        assert spec.name in list_methods()["text"]
    for declared in (spec.probe, spec.run_options, spec.interactive_options):
        assert set(declared) <= set(spec.options)
    if spec.class_set is not None:
        assert spec.class_set in spec.options
    assert set(spec.authors.options) <= set(spec.options) | {"mode", "qk"}
    assert spec.authors.target in ("classifier", "class_name") and spec.authors.resolution in RESOLUTIONS
    assert not spec.authors.class_set or spec.class_set is not None
    assert not spec.paired or "paired" in spec.options
    # what the evaluation sets are its own settings (EvalConfig's fields, which evaluate takes as keywords)
    assert set(spec.run_options.values()) <= set(inspect.signature(ev.evaluate).parameters)
    assert set(spec.run_options.values()) <= set(ev.EvalConfig().settings())


@pytest.mark.parametrize("spec", [s for s in method_specs() if s.image is not None
                                  and s.name not in match_head_methods()], ids=lambda spec: spec.name)
def test_declared_defaults_are_the_methods_defaults(tiny, spec):
    """Every declared option passed explicitly at its declared default gives the maps of a call without it
    (for the slow methods, with their cheap probe options on top)."""
    base = {**dict(spec.probe)}
    if spec.class_set is not None:
        base[spec.class_set] = ge.encode_texts(tiny, PROMPTS + ["a photo"])
    explicit = {**spec.options, **base}
    if spec.class_set is not None and "redundant" in explicit:
        explicit.pop("redundant")  # the class-set form (either redundant or a class set)
    implicit = ge.explain_image(tiny, PIXELS, PROMPTS, method=spec.name, **base)
    declared = ge.explain_image(tiny, PIXELS, PROMPTS, method=spec.name, **explicit)
    assert torch.equal(implicit.maps, declared.maps)


def test_the_evaluation_takes_its_defaults_and_options_from_the_specs():
    from gradeclip_utils.methods.scores import MATCH_SCORES

    # every image method but those that explain only a matching head's score (captions, not class embeddings)
    image_methods = [spec.name for spec in method_specs()
                     if spec.image is not None and not set(spec.scores) <= set(MATCH_SCORES)]
    assert "itm_gradcam" not in image_methods and "grad_eclip" in image_methods
    assert ev.default_methods() == image_methods + [ev.RANDOM]
    assert ev.DEFAULT_METHODS == tuple(ev.default_methods())
    classifier = torch.eye(3, 8)
    config = {"rise_masks": 7, "rise_centre": True, "m2ib_steps": 2, "m2ib_samples": 3, "seed": 5,
              "protocol": "project"}
    assert ev.method_options("rise", config, classifier) == {"masks": 7, "seed": 5, "centre": True}
    assert ev.method_options("m2ib", config, classifier) == {"steps": 2, "samples": 3, "seed": 5}
    assert ev.method_options("clip_surgery", config, classifier)["surgery_targets"] is classifier
    assert ev.method_options("random", config, classifier) == {"seed": 5}
    assert ev.method_options("grad_eclip", config, classifier) == {}
    authors = {**config, "protocol": "authors"}
    assert ev.method_options("grad_eclip", authors, classifier) == {"mode": "official", "qk": "out_proj"}
    assert ev.method_options("rollout", authors, classifier) == {"start_layer": -1}
    for spec in method_specs():
        if spec.image is not None:
            assert ev.method_options(spec.name, authors, classifier) == {
                **spec.options_from(config, classes=classifier), **spec.authors.options}
    # the authors' protocol as their scripts run each method (what the tables of the evaluation said)
    by = {spec.name: spec.authors for spec in method_specs()}
    assert {n for n, a in by.items() if a.target == "class_name" and not a.templates} == {
        "game", "game_last", "rollout", "m2ib"}
    assert {n for n, a in by.items() if a.resolution == "model"} == {"game", "game_last", "rollout", "clip_surgery",
                                                                     "m2ib"}
    assert {n for n, a in by.items() if a.upsampled} == {"clip_surgery", "m2ib"}
    assert len(AUTHORS_CLASS_SET) == 59 and by["clip_surgery"].class_set == AUTHORS_CLASS_SET
    assert {spec.name for spec in method_specs() if spec.paired} == {"m2ib"}


def test_the_explorers_and_studies_take_their_defaults_from_the_specs(tiny):
    assert widgets.comparison_methods() == ["grad_eclip", "grad_eclip_no_spatial", "raw_attention", "rollout",
                                            "grad_cam", "game", "maskclip", "clip_surgery", "itsm"]
    options = widgets.default_method_options(tiny)
    assert list(options) == ["clip_surgery", "rise"] and options["rise"] == {"masks": 500}
    classes = ge.encode_texts(tiny, [f"a photo of a {c}" for c in widgets.GENERIC_CLASSES])
    assert torch.equal(options["clip_surgery"]["surgery_targets"], classes)
    assert method_study.SLOW_METHODS == ("rise", "m2ib")
    assert widgets.method_takes("grad_eclip", "layers") and not widgets.method_takes("rollout", "layers")


# --------------------------------------------------------------------------- a method registered here
def flat_maps(adapter, pixels, targets, *, level: float = 1.0, seed: int = 0, classes=None, calls=None, **_):
    """A map of ``level`` everywhere (``classes``, a class set, adds its size), and the model's scores."""
    if calls is not None:
        calls.append(pixels.shape[0])
    ph, pw = adapter.patch_size
    extra = 0.0 if classes is None else float(classes.shape[0])
    maps = torch.full((pixels.shape[0], targets.shape[0], pixels.shape[-2] // ph, pixels.shape[-1] // pw),
                      level + extra + seed, device=pixels.device)
    with torch.no_grad():
        scores = cosine_scores(adapter.encode_image(pixels), targets)
    return MapOutput(maps=maps, scores=scores)


@pytest.fixture()
def flat():
    spec = register(MethodSpec(name="flat_test", image=flat_maps,
                               options={"level": 1.0, "seed": 0, "classes": None, "calls": None},
                               run_options={"seed": "seed"}, class_set="classes",
                               interactive_options={"level": 2.0}))
    yield spec
    unregister("flat_test")
    assert "flat_test" not in list_methods()["image"]


def test_a_method_registered_in_a_test_file_is_picked_up_everywhere(tiny, flat, tmp_path):
    assert "flat_test" in list_methods()["image"] and ev.default_methods()[-2:] == ["flat_test", ev.RANDOM]
    classifier = torch.eye(3, 8)
    assert ev.method_options("flat_test", {"seed": 4, "rise_masks": 9}, classifier) == {"seed": 4,
                                                                                       "classes": classifier}
    assert widgets.comparison_methods()[-1] == "flat_test"
    assert widgets.default_method_options(tiny)["flat_test"]["level"] == 2.0
    assert "flat_test" in method_study.available_methods(include_slow=False, model=tiny)
    scenes = [generate_scene(5, n_objects=2)]
    explorer = widgets.Explorer(tiny, scenes, ["a red circle"], method="flat_test", auto_render=False)
    assert "flat_test" in explorer.method.options
    comparison = widgets.MethodComparison(tiny, scenes, ["a red circle"], auto_render=False)
    assert "flat_test" in comparison.methods.value
    state = explorer.render()
    assert explorer.error is None and state["method"] == "flat_test" and state["level"] == 2.0
    # the evaluation runs it like any other method, with the options it declares it takes from the run
    data = ev.synthetic_set(tiny, 2)
    ev.evaluate(tiny, data, tmp_path, methods=["grad_eclip", "flat_test"], sanity_images=0, timing_images=0,
                faithfulness=False, seed=3, progress=False)
    rows = [line.split(",") for line in (tmp_path / "per_image.csv").read_text().splitlines()[1:]]
    assert {row[4] for row in rows} == {"grad_eclip", "flat_test"}
    ex = ge.explain_image(tiny, PIXELS, PROMPTS, method="flat_test", seed=3, classes=data.classifier)
    assert float(ex.maps.max()) == 1.0 + 3 + data.classifier.shape[0]


def test_a_paired_method_is_run_paired_by_the_evaluation(tiny):
    calls = []

    def paired_maps(adapter, pixels, targets, *, paired: bool = False, **_):
        calls.append((paired, targets.shape[0]))
        return flat_maps(adapter, pixels, targets)

    register(MethodSpec(name="paired_test", image=paired_maps, options={"paired": False}, paired=True))
    try:
        classes = ge.encode_texts(tiny, PROMPTS + ["a photo"])
        maps = ev.batch_maps(tiny, "paired_test", torch.randn(2, 3, 48, 48), [2, 0], classes, {})
        assert maps.shape == (2, 6, 6) and calls == [(True, 2)]
    finally:
        unregister("paired_test")


# -------------------------------------------------------------------------------------------- refusals
class ToyTower(ImageTower):
    """An image tower that declares what it captures, and why it lacks one capture in its own words."""

    kind = "toy"
    captures = frozenset({"probs"})
    lacking = {"block_outputs": "the toy tower forgets its tokens after each block"}
    num_blocks = 1
    patch_size = (8, 8)
    image_size = (48, 48)
    embed_dim = 8

    def weight(self):
        return torch.zeros(1)

    def trace(self, pixels, layers, **_):  # pragma: no cover - not run here
        raise AssertionError


def toy_adapter():
    class Adapter:
        family = "toy family"
        image = ToyTower()

    return Adapter()


def test_a_refusal_is_built_from_the_two_declarations():
    adapter = toy_adapter()
    needs = MethodSpec(name="needs", image=flat_maps, requires=("probs", "final_tokens"),
                       alternative="use flat_test instead")
    assert refusal(needs, adapter) == ("needs is not available for toy family models: the toy tower does not keep "
                                       "the tokens leaving its last block (use flat_test instead)")
    after = MethodSpec(name="after", image=flat_maps, requires=("block_outputs",))
    assert refusal(after, adapter) == ("after is not available for toy family models: the toy tower forgets its "
                                       "tokens after each block")
    assert refusal(MethodSpec(name="fine", image=flat_maps, requires=("probs",)), adapter) is None
    stand_in = type("StandIn", (), {"family": "stand-in"})()  # declares nothing: not refused here
    assert refusal(needs, stand_in) is None
    with pytest.raises(ValueError, match="unknown captures"):
        MethodSpec(name="bad", image=flat_maps, requires=("telepathy",))


@pytest.fixture(scope="module")
def resnet():
    return ge.wrap_model(fam.reference_open_clip(resnet=True), fam.preprocess(), fam.tokenizer(), name="rn-registry")


def test_refusals_on_a_resnet_come_from_declarations_before_the_method_runs(resnet, tiny):
    adapter = resnet.adapter
    for spec in method_specs():
        if spec.image is not None:
            lacks = [c for c in spec.requires if c not in adapter.image.captures]
            assert (refusal(spec, adapter) is None) == (not lacks), spec.name
    assert refusal(get_spec("itsm"), adapter) == (
        "itsm is not available for open_clip ResNet models: the ResNet attention pool has no per-patch output "
        "tokens (use maskclip, the value-path features, instead)")
    assert refusal(get_spec("m2ib"), adapter) == (
        "m2ib is not available for open_clip ResNet models: the ResNet attention pool leaves no tokens after it "
        "(only the pooled one)")
    calls = []
    register(MethodSpec(name="tokens_test", image=flat_maps, requires=("final_tokens",), options={"calls": None}))
    try:
        message = ("tokens_test is not available for open_clip ResNet models: the ResNet attention pool has no "
                   "per-patch output tokens")
        with pytest.raises(UnsupportedMethodError) as error:
            ge.explain_image(resnet, torch.randn(1, 3, 64, 64), PROMPTS, method="tokens_test", calls=calls)
        assert str(error.value) == message and calls == []
        from gradeclip_utils.explain import method_support

        assert method_support(resnet, "tokens_test", calls=calls) == message and calls == []
        assert method_support(tiny, "tokens_test", calls=calls) is None and calls == [1]
        assert ev.unsupported_methods(resnet, {"tokens_test": {}, "grad_eclip": {}, "random": {}}) == {
            "tokens_test": message}
    finally:
        unregister("tokens_test")
    json.dumps(message)  # a plain string, as config.json records it
