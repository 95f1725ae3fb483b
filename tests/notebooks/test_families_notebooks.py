"""A notebook runs headless (QUICK) on other families than the embedded open_clip model: a random
Hugging Face CLIPModel loaded from a local folder ("hf:PATH"), and open_clip's RN50 with random weights.
The manifests name the family."""

from __future__ import annotations

import json

import pytest

from support import families as fam
from gradeclip_utils.notebooks import list_notebooks, run_notebook

QUICK_START = next(p for p in list_notebooks() if p.stem == "01_quick_start")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hf", "resnet"])
def test_the_quick_start_runs_on_another_family(family, tmp_path):
    if family == "hf":
        folder = tmp_path / "hf-clip"
        fam.to_hf(fam.reference_open_clip()).save_pretrained(folder, safe_serialization=True)
        overrides = {"MODEL": f"hf:{folder}", "QUICK": True, "DEVICE": "cpu"}
        expected = "Hugging Face CLIP"
    else:
        overrides = {"MODEL": "RN50", "PRETRAINED": None, "QUICK": True, "DEVICE": "cpu"}
        expected = "open_clip ResNet"
    run = run_notebook(QUICK_START, tmp_path / "out", overrides)
    assert run.ok and run.figures >= 3
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out" / "figures" / "01_quick_start").glob("*.json")]
    assert manifests and all(json.dumps(m).count(expected) >= 1 for m in manifests)
