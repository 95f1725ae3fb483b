"""Every option that defines an explanation shapes it: for every registered image method (read from the
registry, so a method registered later is covered without editing this file), each setting (layers, mode,
qk, score, resolution) and each of its spec's own options either changes the map or is refused by name. A setting
that is recorded in a result's settings but not applied (LeGrad given ``layers=`` instead of its
``layer_index``) is the bug this catches; the settings a result records are only those applied."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.config import ExplainConfig
from gradeclip_utils.methods import method_specs
from gradeclip_utils.methods.registry import SETTING_DEFAULTS, SETTINGS
from support.blip import match_head_methods

# a picture (uint8, so that it is preprocessed) whose native grid differs from the model's (48 x 48 at patch
# 8), so that the resolution matters
IMAGE = (torch.rand(40, 64, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
PROMPTS = ["a red circle", "a blue square"]

#: options that only cut the work into pieces (memory, speed) or choose which pairs are computed: the map of
#: an (image, target) pair does not depend on them
WORK_OPTIONS = ("chunk", "mask_batch", "mask_chunk", "sample_chunk", "paired")

#: each setting's other value
OTHER_SETTINGS = {"layers": (0,), "mode": "official", "qk": "out_proj", "score": "probability", "resolution": "model"}


def _unit(rows: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, 32, generator=torch.Generator().manual_seed(seed)), dim=-1)


def other_value(name: str, value):
    """Another value of an option: by its name where its values are choices or tensors, else by type. A new
    option of a kind not known here fails the test with its name (add its other value here)."""
    named = {"variant": "authors", "target": "cosine", "surgery_targets": _unit(3, 5), "redundant": _unit(1, 6)[0],
             "depth": 1, "ib_layer": 0, "layer_index": 0, "start_layer": 1, "cells": 4, "masks": 3}
    if name in named:
        return named[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):  # halved: a probability stays one
        return value / 2
    raise AssertionError(f"no other value known for option {name}={value!r}: add one to other_value")


#: over a spec's probe options: M2IB's map is the capacity before its last step, so one step would not see
#: the options of the optimisation
CHEAP = {"m2ib": {"steps": 2}}


def cheap(spec) -> dict:
    """The spec's cheap options (few masks / steps), so that RISE and M2IB run in a moment."""
    return {**spec.probe, **CHEAP.get(spec.name, {})}


def explain(tiny, spec, **keywords):
    return ge.explain_image(tiny, IMAGE, PROMPTS, method=spec.name, progress=False, **keywords)


def changed(a, b) -> bool:
    if len(a.raw) != len(b.raw) or any(x.shape != y.shape for x, y in zip(a.raw, b.raw)):
        return True
    scale = max(float(x.abs().max()) for x in a.raw) or 1.0
    return max(float((x - y).abs().max()) for x, y in zip(a.raw, b.raw)) > 1e-6 * scale


def cases():
    for spec in method_specs():
        if spec.image is None or spec.reference or spec.name in match_head_methods():
            continue
        for setting in (*SETTINGS, "resolution"):
            yield pytest.param(spec.name, setting, id=f"{spec.name}-{setting}")
        for option in spec.options:
            if option not in WORK_OPTIONS:
                yield pytest.param(spec.name, option, id=f"{spec.name}-{option}")


@pytest.mark.parametrize("name, option", list(cases()))
def test_every_option_changes_the_map_or_is_refused_by_name(tiny, name, option):
    spec = next(s for s in method_specs() if s.name == name)
    base_options = cheap(spec)
    base = explain(tiny, spec, **base_options)
    if option in SETTINGS and option not in spec.uses:
        with pytest.raises(ValueError, match=rf"{name} does not use the setting {option}"):
            explain(tiny, spec, **{option: OTHER_SETTINGS[option]}, **base_options)
        assert option not in base.settings  # a setting that did not shape the map is not recorded
        return
    if option in OTHER_SETTINGS:
        keywords = {**base_options, option: OTHER_SETTINGS[option]}
    else:
        default = base_options.get(option, spec.options[option])
        keywords = {**base_options, option: other_value(option, default)}
    other = explain(tiny, spec, **keywords)
    assert changed(base, other), f"{name}: {option}={keywords[option]!r} gives the same maps as the default"
    if option in SETTINGS:
        assert option in base.settings and option in other.settings


def test_legrad_refuses_layers_and_names_layer_index(tiny):
    with pytest.raises(ValueError, match="legrad does not use the setting layers.*layer_index"):
        ge.explain_image(tiny, IMAGE, PROMPTS, method="legrad", layers=(0, 2), progress=False)
    # the default spelled otherwise is the default: (-1,), [-1] and 1 are the last block
    for layers in ((-1,), [-1], 1):
        ExplainConfig(method="legrad", layers=layers)
    with pytest.raises(ValueError, match="legrad does not use the setting layers"):
        ExplainConfig(method="legrad", layers=2)


def test_the_runner_refuses_an_unused_setting_of_an_unregistered_spec(tiny):
    from gradeclip_utils.methods import MethodSpec, MapOutput
    from gradeclip_utils.session import run_image_method

    def flat(adapter, pixels, targets, **_):
        return MapOutput(maps=torch.zeros(len(pixels), len(targets), 6, 6), scores=torch.zeros(len(pixels), len(targets)))

    spec = MethodSpec(name="flat_reference", image=flat)
    assert spec.uses == ()
    pixels = torch.rand(1, 3, 48, 48)
    run_image_method(tiny, ExplainConfig(method="flat_reference"), pixels, _unit(2, 1), spec=spec)
    with pytest.raises(ValueError, match="flat_reference does not use the setting mode"):
        run_image_method(tiny, ExplainConfig(method="flat_reference", mode="official"), pixels, _unit(2, 1), spec=spec)


def test_text_methods_refuse_unused_settings_and_default_to_the_authors_eight_blocks(tiny):
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    words = ge.explain_text(tiny, image, PROMPTS, method="game")
    assert "layers" not in words.settings and "mode" not in words.settings
    with pytest.raises(ValueError, match="game does not use the setting layers.*start_layer"):
        ge.explain_text(tiny, image, PROMPTS, method="game", layers=2)
    ours = ge.explain_text(tiny, image, PROMPTS)  # Grad-ECLIP: the last 8 blocks, capped to the tower's 3
    assert ours.settings["layers"] == [0, 1, 2]


@pytest.mark.parametrize("name", [s.name for s in method_specs() if s.image is not None])
def test_every_preset_gives_a_method_only_settings_it_applies(name):
    """The authors' protocol, the explorers' interactive options and the cheap probe are configs the method
    accepts (a preset that set a setting the method ignores would be refused at run time)."""
    from gradeclip_utils import evaluation as ev

    spec = next(s for s in method_specs() if s.name == name)
    for preset in (spec.authors.options, spec.interactive_options, spec.probe):
        options = dict(preset)
        settings = {s: options.pop(s) for s in SETTINGS if s in options}
        ExplainConfig(method=name, options=options, **settings)
    options = ev.method_options(name, {"protocol": "authors", "rise_masks": 4, "seed": 0}, torch.eye(2, 32))
    ExplainConfig(method=name, mode=options.pop("mode", "faithful"), qk=options.pop("qk", "raw"), options=options)


def test_defaults_of_the_settings_are_the_config_defaults():
    config = ExplainConfig()
    assert {s: getattr(config, s) for s in SETTINGS} == SETTING_DEFAULTS
