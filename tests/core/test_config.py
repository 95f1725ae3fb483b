"""``ExplainConfig``: the settings of an explanation validated once (errors name the bad value and the
choices, wherever the settings come in), carried by results, and ``to_settings()`` exactly the dict results
stored before it existed (so saved files and manifests do not change), with the explained score added where
the method explains one (it is a setting since: tests/methods/test_scores.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.config import ExplainConfig
from gradeclip_utils.explain_dataset import explain_dataset

PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
PROMPTS = ["a red circle", "a blue square"]

BAD = [("mode", "fast", r"mode must be one of \('faithful', 'official'\), got 'fast'"),
       ("qk", "q", r"qk must be one of \('raw', 'out_proj'\), got 'q'"),
       ("resolution", "high", r"resolution must be one of \('native', 'model'\), got 'high'")]


@pytest.mark.parametrize("name,value,message", BAD)
def test_a_bad_setting_names_the_value_and_the_choices_wherever_it_comes_in(tiny, tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        ExplainConfig(**{name: value})
    with pytest.raises(ValueError, match=message):
        ge.explain_image(tiny, PIXELS, PROMPTS, **{name: value})
    with pytest.raises(ValueError, match=message):
        ge.explain_text(tiny, PIXELS, PROMPTS, **{name: value})
    with pytest.raises(ValueError, match=message):  # before the folder is read
        explain_dataset(tiny, tmp_path / "absent", tmp_path / "out", prompts=PROMPTS, **{name: value})
    with pytest.raises(ValueError, match=r"templates must be one of \('openai', 'simple'\), got 'fancy'"):
        explain_dataset(tiny, tmp_path / "absent", tmp_path / "out", classes="own", templates="fancy")


def test_the_config_is_small_typed_and_frozen():
    config = ExplainConfig(method="grad_cam", layers=[0, 2], options={"chunk": 8})
    assert config.layers == (0, 2) and ExplainConfig(layers=3).layers == 3
    assert config == ExplainConfig(method="grad_cam", layers=(0, 2), options={"chunk": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "official"
    assert config.keywords() == {"method": "grad_cam", "layers": (0, 2), "mode": "faithful", "qk": "raw",
                                 "resolution": "native", "max_patches": 1600, "score": "cosine", "chunk": 8}
    assert ge.ExplainConfig is ExplainConfig and "ExplainConfig" in ge.__all__


def old_image_settings(model, method, layers, mode, qk, resolution, options, score=None):
    """What explain_image stored as settings before ExplainConfig (its literal dict), and the score since it
    is a setting (given for the methods that explain one)."""
    return {"method": method, "layers": layers, "mode": mode, "qk": qk, "resolution": resolution,
            **({} if score is None else {"score": score}),
            **model.describe(), **{k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}}


def test_to_settings_is_what_results_stored_before(tiny, tmp_path):
    ex = ge.explain_image(tiny, PIXELS, PROMPTS, layers=2, mode="official", qk="out_proj", resolution="model",
                          spatial_weight=True, chunk=4)
    want = old_image_settings(tiny, "grad_eclip", [1, 2], "official", "out_proj", "model",
                              {"spatial_weight": True, "chunk": 4}, score="cosine")
    # and the images per chunk (both here: the tiny model's images fit any default budget), as the texts' chunk
    assert ex.settings == {**want, "image_chunk": len(PIXELS)} and list(ex.settings) == [*want, "image_chunk"]
    assert ex.config.to_settings(tiny.describe()) == want
    assert ex.config == ExplainConfig(layers=(1, 2), mode="official", qk="out_proj", resolution="model",
                                      options={"spatial_weight": True, "chunk": 4})
    assert ex[1].config is ex.config and ex[1].settings == ex.settings
    # a method whose prepare hook completes the options: the completed ones, plain values only (no tensors)
    # (less the settings CLIP Surgery does not apply: layers, mode and qk are recorded only where applied)
    single = ge.explain_image(tiny, PIXELS, PROMPTS[:1], method="clip_surgery")
    applied = old_image_settings(tiny, "clip_surgery", [2], "faithful", "raw", "native", single.config.options)
    for setting in ("layers", "mode", "qk"):
        del applied[setting]
    assert single.settings == {**applied, "image_chunk": len(PIXELS)}
    assert single.settings["surgery_form"] == "single-text (empty string)" and "redundant" not in single.settings
    assert torch.is_tensor(single.config.options["redundant"])
    saved = ge.ImageExplanation.load(ex.save(tmp_path / "ex"))
    assert saved.settings == {**want, "image_chunk": len(PIXELS)} and saved.config is None
    # texts: the same without the method options (as they always were)
    text = ge.explain_text(tiny, PIXELS[:1], PROMPTS, layers=2, mode="official", chunk=4)
    want_text = {"method": "grad_eclip", "layers": [1, 2], "mode": "official", "qk": "raw", "resolution": "model",
                 "score": "cosine", **tiny.describe()}
    # and the chunk of texts per batch (all of them here: the tiny model's captions fit any default budget)
    assert text.settings == {**want_text, "caption_chunk": len(PROMPTS)}
    assert list(text.settings) == [*want_text, "caption_chunk"]
    assert text.config.to_settings(tiny.describe(), options=False) == want_text
    assert text.config.options == {"chunk": 4} and text.config.layers == (1, 2)


def test_a_config_gives_the_keywords_that_make_it(tiny):
    config = ExplainConfig(method="grad_eclip", layers=(1,), mode="official", resolution="model",
                           options={"spatial_weight": False})
    by_config = ge.explain_image(tiny, PIXELS, PROMPTS, **config.keywords())
    by_keywords = ge.explain_image(tiny, PIXELS, PROMPTS, method="grad_eclip", layers=(1,), mode="official",
                                   resolution="model", spatial_weight=False)
    assert torch.equal(by_config.maps, by_keywords.maps) and by_config.settings == by_keywords.settings
    assert by_config.config == config
