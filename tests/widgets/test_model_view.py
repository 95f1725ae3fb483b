"""The models-side-by-side view: two families of the same weights agree (Spearman 1), a randomised
copy does not; what it draws is what compare_models computes; errors replace the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradeclip_utils as ge
from gradeclip_utils.metrics import randomised_copy
from gradeclip_utils.widgets import ModelComparisonView

from support import families as fam

PICTURE = (torch.rand(3, 70, 100, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def pair():
    reference = fam.reference_open_clip()
    return {"open_clip": ge.wrap_model(reference, fam.preprocess(), fam.tokenizer(), name="open_clip"),
            "hf": ge.wrap_model(fam.to_hf(reference), name="hf")}


def test_the_view_draws_compare_models(pair):
    view = ModelComparisonView(pair, {"noise": PICTURE}, ["a red circle", "a dog"])
    want = ge.compare_models(pair, PICTURE, ["a red circle", "a dog"])
    assert view.error is None and view.figure is not None
    assert np.allclose(view.last["scores"], want.scores[:, 0].numpy(), atol=1e-6)
    assert np.allclose(view.last["agreement"]["a dog"], want.agreement()[0, 1], atol=1e-4)
    assert view.last["agreement"]["a dog"][0][1] == pytest.approx(1.0, abs=1e-4)  # the same weights
    assert len(view.figure.axes) == 2 * 2 + 1  # 2 models x 2 prompts, the colour bar
    assert "Hugging Face CLIP" in view.figure.get_suptitle() and "open_clip ViT" in view.figure.get_suptitle()
    assert "vs" in view.table.value and "+1.000" in view.table.value


def test_a_randomised_copy_disagrees_and_errors_replace_the_output(pair):
    model = pair["open_clip"]
    broken = randomised_copy(model, stages=2)
    assert broken.name == "open_clip (top 2 randomised)"
    assert not torch.equal(broken.model.visual.proj, model.model.visual.proj)  # the copy, not the model
    view = ModelComparisonView({"trained": model, "randomised": broken}, [PICTURE], ["a red circle"])
    rho = view.last["agreement"]["a red circle"][0][1]
    assert rho < 0.99
    view.shared.value = True
    assert view.last["shared_scale"] and view.error is None
    view.prompts.value = " ; "
    assert view.error is not None and "type at least one prompt" in view.error
    assert view.figure is None and view.table.value == ""
    with pytest.raises(ValueError, match="at least two models"):
        ModelComparisonView({"one": model}, [PICTURE], ["a"])
