"""The critique study (studies/critique.py, notebook 08): Grad-ECLIP's maps equal the attention-probability
gradient route to 1e-5 on realistic random weights and a non-square input, and the sentences the notebook and
docs/critique.md print carry the numbers the run computed."""

from __future__ import annotations

import re

import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.studies import critique

TOL = 1e-5


def noise(batch, height, width, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def targets(model, prompts=("a red circle", "two blue squares", "a photo")):
    from gradeclip_utils.explain import encode_texts

    return encode_texts(model, list(prompts))


@pytest.mark.parametrize("mode", ["official", "faithful"])
@pytest.mark.parametrize("spatial_weight", [False, True])
@pytest.mark.parametrize("layers", [(-1,), (0, 2)], ids=["last", "several"])
def test_grad_eclip_is_the_attention_probability_gradient(tiny, mode, spatial_weight, layers):
    pixels = noise(2, 40, 56)  # a non-square 5 x 7 grid
    ours = critique.grad_eclip_maps(tiny, pixels, targets(tiny), layers=layers, mode=mode, spatial_weight=spatial_weight)
    route = critique.attention_route_maps(tiny, pixels, targets(tiny), layers=layers, mode=mode,
                                          spatial_weight=spatial_weight)
    assert ours.shape == route.shape == (2, 3, 5, 7)
    assert ours.abs().max() > 1e-3, "degenerate maps would prove nothing"
    assert (ours - route).abs().max() <= TOL


def test_the_equivalence_table_and_the_heads(tiny):
    pixels = noise(1, 40, 56, seed=1)
    result = critique.equivalence(tiny, pixels, targets(tiny), layer_sets=((-1,), (0, 1, 2)))
    assert len(result["rows"]) == 8 and result["max_abs_diff"] <= TOL
    heads = critique.per_head_terms(tiny, pixels, targets(tiny))
    assert heads["heads"] == 4 and len(heads["terms"]) == 4 and heads["grid"] == [5, 7]
    assert heads["sum_relu_vs_grad_eclip"] <= TOL
    gradients, _, _, _ = critique.attention_gradients(tiny, pixels, targets(tiny), mode="official")
    assert next(iter(gradients.values())).shape == (1, 3, 1, 35)  # official mode: one head


def test_the_baselines_are_declared(tiny):
    pixels = noise(2, 48, 48)
    mean, std = tiny.normalization
    black = critique.baseline_pictures(pixels, "black", 8, mean, std)
    assert torch.allclose(black * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1),
                          torch.zeros_like(black), atol=1e-6)
    flat = critique.baseline_pictures(pixels, "mean colour", 8, mean, std)
    assert torch.allclose(flat, pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels))
    assert critique.baseline_pictures(pixels, "blurred", 8, mean, std).std() < pixels.std()
    with pytest.raises(ValueError, match="baseline"):
        critique.baseline_pictures(pixels, "grey", 8, mean, std)


def test_random_weights_get_what_they_can_show(tiny):
    assert critique.parts_for(tiny) == critique.RANDOM_WEIGHT_PARTS
    assert critique.parts_for(ge.load_model()) == critique.ALL_PARTS
    with pytest.raises(ValueError, match="unknown parts"):
        critique.run_study(tiny, parts=("equivalence", "nonsense"))


@pytest.fixture(scope="module")
def study():
    model = ge.load_model()
    torch.set_num_threads(1)
    return critique.run_study(model, quick=True, images=4, zero_shot=12)


def _numbers(sentence: str) -> list[str]:
    return re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?%?", sentence)


def test_the_sentences_carry_the_computed_numbers(study):
    sentences = critique.claims(study)
    assert len(sentences) == 9
    text = "\n".join(sentences)
    e, s, f = study["equivalence"], study["scores"], study["faithfulness"]
    assert e["max_abs_diff"] <= TOL and f"differ by at most {e['max_abs_diff']:.2e}" in text
    official, faithful = s["cells"]["one head, model"], s["cells"]["model's heads, model"]
    assert f"best prompt changed for {100 * official['best_changed']:.1f}% of the {s['images']} images" in text
    assert f"differs from the model's own by {official['mean_abs_diff']:.4f} on average" in text
    assert f"{100 * s['own_accuracy']:.1f}% under the model's own forward" in text
    assert f"{100 * official['accuracy']:.1f}% under official mode's" in text
    paired = f["paired"]["official - faithful"]["deletion"]
    assert f"deletion {paired[0]:+.3f} [{paired[1]:+.3f}, {paired[2]:+.3f}]" in text
    for baseline, r in study["sensitivity"]["per_baseline"].items():
        assert f"baseline {baseline}: faithful {r['mean']['faithful']:.3f}, official {r['mean']['official']:.3f}" in text
    for mode, rows in study["sanity"]["stages"].items():
        assert f"{mode}: Spearman {rows[1]['spearman']:.3f} after the first stage" in text
    # every number of every sentence is one the run computed (read back, not typed in)
    assert all(_numbers(sentence) for sentence in sentences[:1] + sentences[2:])


def test_official_mode_changes_the_scores_faithful_mode_does_not(study):
    cells = study["scores"]["cells"]
    assert cells["model's heads, model"]["max_abs_diff"] <= TOL
    assert cells["one head, model"]["max_abs_diff"] > 1e-3
    assert study["scores"]["pairs"] == 12 * 35


def test_the_page_names_its_command(study, tmp_path):
    page = critique.markdown(study, command="python -m gradeclip_utils.studies.critique --out x --doc y")
    assert "python -m gradeclip_utils.studies.critique --out x --doc y" in page
    for sentence in critique.claims(study):
        assert sentence in page
    for heading in ("## 1. The equivalence", "## 3. The model's own forward", "## 5. Sensitivity-n",
                    "## 6. Cascading randomisation"):
        assert heading in page


def test_where_the_critique_is_right_and_where_not(study):
    """The page's first section: the score shift and the equivalence with their numbers, and each paired
    interval said to exclude zero exactly when it does."""
    sentences = critique.assessment(study)
    text = "\n".join(sentences)
    official = study["scores"]["cells"]["one head, model"]
    assert f"moves the model's cosines by {official['mean_abs_diff']:.4f} on average" in text
    assert f"up to {official['max_abs_diff']:.4f}" in text
    assert f"largest difference {study['equivalence']['max_abs_diff']:.1e}" in text
    assert "attention-gradient method" in text and "does not make Grad-ECLIP incorrect" in text
    verdict = next(s for s in sentences if s.startswith(f"On {study['faithfulness']['images']} images"))
    separated, _, rest = verdict.partition("; it does not for ")
    for metric, triple in study["faithfulness"]["paired"]["official - faithful"].items():
        excludes = triple[1] > 0 or triple[2] < 0
        assert (f"{metric} {triple[0]:+.3f}" in (separated if excludes else rest)), (metric, triple)
    for baseline, r in study["sensitivity"]["per_baseline"].items():
        excludes = r["faithful_minus_official"][1] > 0 or r["faithful_minus_official"][2] < 0
        assert (f"{baseline} (" in text) == excludes, baseline


def test_the_page_reports_a_random_weight_run(study, tiny):
    """A random-weight run (``--random-model``) gets only the equivalence, the cost and the score shift, no
    accuracy, in a section of its own on the same page."""
    random = critique.run_study(tiny, images=2, zero_shot=4, repeats=1)
    assert random["weights"] == "random" and random["parts"] == list(critique.RANDOM_WEIGHT_PARTS)
    sentences = critique.claims(random)
    assert len(sentences) == 5 and not any("accuracy" in s for s in sentences)
    page = critique.markdown({**study, "random_model": random}, command="gradeclip critique --out x")
    assert "## Random weights: `" in page and "### 1. The equivalence" in page and "### 6." not in page
    for sentence in sentences:
        assert sentence in page
    assert "| top-1 |" not in page.split("## Random weights")[1]
