"""SigLIP and BLIP through transformers on the command line and in the batch jobs: ``gradeclip explain``,
``explain-dataset`` and ``evaluate`` with a random-weight ``SiglipModel`` and ``BlipForImageTextRetrieval`` saved
to folders with their tokenizers (``hf:FOLDER``, offline; 64 x 64 pixels, two blocks, width 64).

A score left out is the model's own default (SigLIP's logit, BLIP's ITC cosine), checked against the models run
directly by transformers: the printed scores against their ``logits_per_image`` and ITC cosine, the matching
head's probability against its ITM head; the dataset job's maps against ``explain_image`` for the same prompts,
its index recording the score it explained; the evaluation's ``config.json`` recording the family and score.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils import cli
from gradeclip_utils.evaluation import default_methods
from gradeclip_utils.inputs import prepare_image
from gradeclip_utils.maps_store import DatasetMaps

from support.blip import save_blip
from support.families import relative
from support.siglip import save

PROMPTS = ["a red circle", "a photo of a dog"]
TOLERANCE = 1e-5
DEFAULTS = {"siglip": "logit", "blip": "itc"}
FAMILIES = {"siglip": "Hugging Face SigLIP", "blip": "Hugging Face BLIP"}


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Both models saved with their tokenizers: name -> (folder, the model as transformers runs it)."""
    siglip, blip = tmp_path_factory.mktemp("siglip"), tmp_path_factory.mktemp("blip")
    return {"siglip": (siglip, save(siglip).eval()), "blip": (blip, save_blip(blip, image_size=64).eval())}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two class folders of one non-square picture each (48 x 80: a 3 x 5 grid of 16-pixel patches)."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for folder in ("red_circle", "dog"):
        (root / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / folder / "0.png")
    return root


def own_scores(name: str, model, loaded, path, prompts=PROMPTS, score: str | None = None) -> torch.Tensor:
    """The model's own scores of the picture (as explain prepares it, at native resolution) against ``prompts``,
    computed by transformers: SigLIP's logits_per_image (its sigmoid for the probability); BLIP's ITC cosine, or
    its ITM head's match probability."""
    pixels = prepare_image(loaded, Image.open(path), "native").pixels[None]
    ids = loaded.tokenize(prompts)
    with torch.no_grad():
        if name == "siglip":
            logits = model(input_ids=ids, pixel_values=pixels, interpolate_pos_encoding=True).logits_per_image[0]
            return torch.sigmoid(logits) if score == "probability" else logits
        mask = (ids != 0).long()
        if score == "itm":
            batch = pixels.expand(len(prompts), -1, -1, -1)
            out = model(input_ids=ids, pixel_values=batch, attention_mask=mask, interpolate_pos_encoding=True)
            return out.itm_score.softmax(-1)[:, 1]
        return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False,
                     interpolate_pos_encoding=True).itm_score[0]


def printed(out: str, count: int = len(PROMPTS)) -> tuple[torch.Tensor, list[str]]:
    lines = out.splitlines()[:count]
    return torch.tensor([float(line.split()[0]) for line in lines]), [line.split(None, 1)[1] for line in lines]


# -------------------------------------------------------------------------------------------- explain
@pytest.mark.parametrize("name, options, score", [
    ("siglip", [], None), ("siglip", ["--score", "probability"], "probability"),
    ("blip", [], None), ("blip", ["--method", "itm_gradcam", "--score", "itm"], "itm"),
])
def test_explain_prints_the_models_own_scores(folders, tree, tmp_path, capsys, name, options, score):
    """Left out, the score is the model's own default (SigLIP's logit, BLIP's ITC cosine), not the cosine named
    by default for a CLIP; given, SigLIP's probability is each pair's sigmoid and BLIP's ITM its matching head's."""
    folder, model = folders[name]
    image = tree / "dog" / "0.png"
    code, out, err = run(["explain", str(image), *PROMPTS, "--model", f"hf:{folder}", "--device", "cpu",
                          "--out", str(tmp_path / "fig.png"), *options], capsys)
    assert code == 0, err
    values, prompts = printed(out)
    assert prompts == PROMPTS and (tmp_path / "fig.png").is_file()
    loaded = ge.load_model(f"hf:{folder}", device="cpu")
    assert torch.allclose(values, own_scores(name, model, loaded, image, score=score), atol=1e-4)
    keywords = {option.lstrip("-"): value for option, value in zip(options[::2], options[1::2])}
    explained = ge.explain_image(loaded, str(image), PROMPTS, progress=False, **keywords)
    assert explained.settings["score"] == (score or DEFAULTS[name])
    if score == "itm":  # the words' Grad-ECLIP explains no matching score: said, not computed
        assert "(no word importance: grad_eclip cannot explain score='itm'" in out
    else:
        assert (tmp_path / "fig_words0.png").is_file()


# ------------------------------------------------------------------------------------- explain-dataset
@pytest.mark.parametrize("name", ["siglip", "blip"])
def test_the_dataset_job_explains_the_models_default_score(folders, tree, tmp_path, capsys, name):
    """Every image's stored maps are explain_image's for the same prompts, its scores the model's own; the index
    records the score explained (the model's default, left out on the command line; the cosine where given)."""
    folder, model = folders[name]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "maps"
    code, _, err = run(["explain-dataset", str(tree), "--prompts", str(prompts), "--model", f"hf:{folder}",
                        "--device", "cpu", "--out", str(out), "--batch-size", "1"], capsys)
    assert code == 0, err
    maps = DatasetMaps(out)
    assert maps.score == DEFAULTS[name] and maps.settings["score"] == DEFAULTS[name]
    assert maps.settings["model"]["family"] == FAMILIES[name] and maps.prompts == PROMPTS
    loaded = ge.load_model(f"hf:{folder}", device="cpu")
    for key in maps:
        stored = maps[key]
        expected = ge.explain_image(loaded, str(tree / key), PROMPTS, progress=False)
        assert expected.settings["score"] == DEFAULTS[name]
        assert relative(stored.maps, expected.raw[0]) < TOLERANCE
        assert torch.allclose(stored.scores, own_scores(name, model, loaded, tree / key), atol=1e-5)
    if name == "siglip":  # the cosine given is the cosine, not the logit it would stand for in a classifier
        code, _, err = run(["explain-dataset", str(tree), "--prompts", str(prompts), "--model", f"hf:{folder}",
                            "--device", "cpu", "--out", str(tmp_path / "cosine"), "--score", "cosine"], capsys)
        assert code == 0, err
        cosine = DatasetMaps(tmp_path / "cosine")
        assert cosine.score == "cosine" and "score" not in cosine.settings
        stored = cosine["dog/0.png"]
        scale = float(model.logit_scale.exp())
        bias = float(model.logit_bias)
        assert torch.allclose(stored.scores * scale + bias, maps["dog/0.png"].scores, atol=1e-5)
        assert relative(stored.maps * scale, maps["dog/0.png"].maps) < TOLERANCE  # the logit's gradient: s x


# ------------------------------------------------------------------------------------------- evaluate
def _evaluate(folder, tree, out, *options) -> list[str]:
    return ["evaluate", "--dataset", "imagenet", "--data", str(tree), "-n", "2", "--model", f"hf:{folder}",
            "--device", "cpu", "--sanity-images", "0", "--timing-images", "0", "--tie-seeds", "1", "--out", str(out),
            "--templates", "simple",  # one short template: the test models read 16 tokens
            *options]


@pytest.mark.parametrize("score", [None, "logit"])
def test_the_evaluation_records_siglips_family_and_score(folders, tree, tmp_path, capsys, score):
    """The evaluation's curves score a zero-shot classifier's cosine, logit and probability among the classes,
    so its score left out is the cosine (a SigLIP gives it); config.json names the family and the score the maps
    explained."""
    folder, _ = folders["siglip"]
    out = tmp_path / "eval"
    code, _, err = run(_evaluate(folder, tree, out, "--methods", "grad_eclip,grad_cam,random",
                                 *(["--score", score] if score else [])), capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["family"] == "Hugging Face SigLIP" and config["classes"] == 2
    assert config["explained_score"] == (score or "cosine") and config.get("score") == score
    methods = sorted(line.split(",")[4] for line in (out / "per_image.csv").read_text().splitlines()[1:])
    assert methods == sorted(["grad_eclip", "grad_cam", "random"] * 2)


def test_the_evaluation_of_blip_leaves_out_the_matching_heads_grad_cam(folders, tree, tmp_path, capsys):
    """The evaluation explains each image's class through the zero-shot classifier's row, a text embedding
    averaged over templates: BLIP's ITC cosine. The matching head's Grad-CAM explains only the ITM probability,
    which takes one caption's tokens through the text encoder's cross-attention, so no class row gives it: the
    default methods leave it out (and name it nowhere as refused), and asked for by name it is refused."""
    folder, _ = folders["blip"]
    out = tmp_path / "eval"
    assert "itm_gradcam" not in default_methods()
    code, _, err = run(_evaluate(folder, tree, out, "--rise-masks", "64", "--m2ib-steps", "2", "--m2ib-samples",
                                 "2"), capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["family"] == "Hugging Face BLIP" and config["explained_score"] == "itc"
    assert "score" not in config and "itm_gradcam" not in config.get("not_run", {})
    methods = {line.split(",")[4] for line in (out / "per_image.csv").read_text().splitlines()[1:]}
    assert methods == set(default_methods())
    code, _, err = run(_evaluate(folder, tree, tmp_path / "itm", "--methods", "itm_gradcam"), capsys)
    assert code == 2 and "itm_gradcam is not evaluated: it explains only 'itm'" in err
    assert "the evaluation's targets (each class's text embedding, averaged over the templates)" in err
    code, _, err = run(_evaluate(folder, tree, tmp_path / "logit", "--score", "logit"), capsys)
    assert code == 2 and "score='logit' is not a score of this model (Hugging Face BLIP)" in err
