"""The notebooks: committed clean, each executes top to bottom headless (papermill) on the embedded synthetic
CLIP (QUICK study sizes), every figure it draws is exported with a manifest that describes it, and the
executed copy holds the state of every widget it shows (so a reopened copy shows them, not an error)."""

from __future__ import annotations

import ast
import base64
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import gradeclip_utils
from gradeclip_utils.cli import alias_main
from gradeclip_utils.export import load_manifests
from gradeclip_utils.methods import list_methods
from gradeclip_utils.notebooks import (INJECTED_TAG, NotebookError, check_parameters, list_notebooks,
                                       overrides_per_notebook, parameter_names, parameters_cell_index, run_all,
                                       run_notebook)
from gradeclip_utils.resources import REPO_ROOT

NOTEBOOKS = list_notebooks()
REQUIRED_PARAMETERS = {"MODEL", "PRETRAINED", "DEVICE", "OUT_DIR", "QUICK", "FULL"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: seconds one notebook may take in QUICK mode (they take 20-70 s on two busy cores)
TIME_LIMIT = 240


def test_the_collection():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quick_start", "02_explorer", "03_concept_decomposition", "04_attribute_count_failures",
        "05_word_importance", "06_layers", "07_methods_faithfulness", "08_critique", "09_classifier"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_with_one_parameters_cell(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in notebook.metadata  # no saved widget state
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    index = parameters_cell_index(notebook)
    assert REQUIRED_PARAMETERS <= set(parameter_names(notebook))
    values: dict = {}
    exec(compile(ast.parse(notebook.cells[index].source), str(path), "exec"), {}, values)
    assert values["MODEL"] == "synthetic" and values["PRETRAINED"] is None and values["DEVICE"] is None
    assert values["QUICK"] is False and values["FULL"] is False
    assert values["OUT_DIR"] == f"outputs/figures/{path.stem}"
    assert "tqdm.auto" not in "".join(c.source for c in notebook.cells)  # widget bars vanish on a reload
    for line in notebook.cells[index].source.splitlines():  # papermill reads a line with one "=" only
        assert line.count("=") <= 1, line


def _code(source: str) -> ast.Module:
    """A code cell's Python (IPython's magic and shell lines left out)."""
    return ast.parse("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_manifests_record_every_parameter(path):
    """The notebook's one FigureExporter gets parameters=dict(NAME=NAME, ...) with every name its parameters
    cell assigns (OUT_DIR aside: the folder the manifests are in), so that a figure's manifest says how to
    run its notebook again. Read from the notebook's source, without running it."""
    notebook = nbformat.read(path, as_version=4)
    calls = [node for cell in notebook.cells if cell.cell_type == "code" for node in ast.walk(_code(cell.source))
             if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "FigureExporter"]
    assert len(calls) == 1, f"{len(calls)} FigureExporter calls"
    given = {keyword.arg: keyword.value for keyword in calls[0].keywords}
    assert "parameters" in given, "FigureExporter without parameters="
    recorded = given["parameters"]
    assert isinstance(recorded, ast.Call) and getattr(recorded.func, "id", None) == "dict" and not recorded.args, \
        ast.unparse(recorded)
    values = {keyword.arg: keyword.value for keyword in recorded.keywords}
    wanted = [name for name in parameter_names(notebook) if name != "OUT_DIR"]
    assert sorted(values) == sorted(wanted), (f"left out: {sorted(set(wanted) - set(values))}, "
                                              f"not parameters: {sorted(set(values) - set(wanted))}")
    assert all(isinstance(value, ast.Name) and value.id == name for name, value in values.items()), \
        ast.unparse(recorded)


def test_overrides_are_checked_before_anything_runs():
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    check_parameters(notebook, {"QUICK": True, "OUT_DIR": "/tmp/x"})
    with pytest.raises(ValueError, match="unknown parameters"):
        check_parameters(notebook, {"QIUCK": True})
    with pytest.raises(ValueError, match="plain literal"):
        check_parameters(notebook, {"QUICK": object()})
    shares = overrides_per_notebook(NOTEBOOKS, {"QUICK": True, "N_IMAGES": 5, "N_SCENES": 7})
    have = {p.stem: set(parameter_names(nbformat.read(p, as_version=4))) for p in NOTEBOOKS}
    for path, share in shares.items():  # the common ones everywhere, the others where the notebook has them
        assert share == {"QUICK": True, **{k: v for k, v in (("N_IMAGES", 5), ("N_SCENES", 7)) if k in have[path.stem]}}
    assert shares[NOTEBOOKS[6]]["N_IMAGES"] == 5 and "N_IMAGES" not in shares[NOTEBOOKS[0]]
    with pytest.raises(ValueError, match="no selected notebook has them"):
        overrides_per_notebook(NOTEBOOKS, {"N_IMAGE": 5})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metadata_is_what_jupyterlab_writes_on_open(path):
    """JupyterLab sets a notebook's kernelspec and language_info to its kernel's when it opens it, and marks
    the notebook modified where they differ: they are stored as ipykernel's python3 kernel gives them (the
    browser test opens them, with the patch version too), with nbformat 4.5's cell ids."""
    from ipykernel.ipkernel import IPythonKernel

    notebook = nbformat.read(path, as_version=4)
    assert (notebook.nbformat, notebook.nbformat_minor) == (4, 5) and all("id" in cell for cell in notebook.cells)
    assert notebook.metadata["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                               "name": "python3"}
    stored, kernel = dict(notebook.metadata["language_info"]), dict(IPythonKernel.language_info)
    assert stored.pop("version").split(".")[:2] == kernel.pop("version").split(".")[:2]
    assert stored == kernel


class _Bar:
    """What the runner's tqdm bar is told."""

    def __init__(self):
        self.labels = []

    def set_postfix_str(self, text):
        self.labels.append(text)


def _tiny_notebook(path: Path, body: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_markdown_cell("# test"),
                      nbformat.v4.new_code_cell("OUT_DIR = 'x'\nQUICK = False", metadata={"tags": ["parameters"]})]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in body]
    nbformat.write(notebook, path)
    return path


def test_a_failing_notebook_is_named_with_its_cell(tmp_path, capfd):
    good = _tiny_notebook(tmp_path / "good.ipynb", [
        "import sys\nprint(sys.executable)\nprint(QUICK)",
        "import time\nfrom tqdm import tqdm\nfor _ in tqdm(range(4), desc='inner work', mininterval=0):\n    time.sleep(1.2)",
        "import ipywidgets\nipywidgets.IntSlider(value=3, description='probe')"])
    bad = _tiny_notebook(tmp_path / "bad.ipynb", ["x = 1", "raise RuntimeError('boom')", "y = 2"])
    out = tmp_path / "out"
    with pytest.raises(NotebookError) as caught:
        run_notebook(bad, out, {"QUICK": True})
    message = str(caught.value)
    assert "notebook bad failed in cell 3: RuntimeError: boom (In [4] of the executed copy" in message
    assert nbformat.read(bad, as_version=4).cells[3].source == "raise RuntimeError('boom')"  # cell 3 of the file
    executed = nbformat.read(out / "notebooks" / "bad.ipynb", as_version=4)
    failing = [c for c in executed.cells if c.cell_type == "code" and c.source == "raise RuntimeError('boom')"]
    assert failing[0].outputs[0]["output_type"] == "error" and failing[0].execution_count == 4
    assert [c for c in executed.cells if c.source == "y = 2"][0].execution_count is None  # nothing ran after it
    bar = _Bar()
    assert run_notebook(good, out, {"QUICK": True}, progress=bar).ok
    assert "good: cell 4/5" in bar.labels and any(l.startswith("good: cell 4/5 | inner work:") for l in bar.labels)
    runs = run_all(out, [good, bad], {"QUICK": True}, progress=False)
    assert [(r.notebook, r.ok, r.failed_cell) for r in runs] == [("good", True, None), ("bad", False, 3)]
    executed = nbformat.read(out / "notebooks" / "good.ipynb", as_version=4)
    index = parameters_cell_index(executed)
    injected = executed.cells[index + 1]  # papermill's cell, right after the parameters cell
    assert injected.metadata["tags"] == [INJECTED_TAG] and "QUICK = True" in injected.source
    import sys

    printed = executed.cells[index + 2].outputs[0]["text"]
    assert printed.split() == [sys.executable, "True"]  # the runner's own interpreter, the injected value
    progress_text = executed.cells[index + 3].outputs[0]["text"]
    assert "\r" not in progress_text and "inner work: 100%" in progress_text  # text progress, compacted
    view = executed.cells[index + 4].outputs[0]["data"][WIDGET_VIEW]["model_id"]
    state = executed.metadata["widgets"][WIDGET_STATE]["state"]
    assert state[view]["state"]["value"] == 3 and state[view]["state"]["description"] == "probe"
    summary = json.loads((out / "summary.json").read_text())
    assert [n["notebook"] for n in summary["notebooks"]] == ["good", "bad"] and summary["seconds"] > 0
    assert "without encryption" not in capfd.readouterr().err  # the kernels talk over IPC, not TCP


#: a cell that keeps the kernel in its handler of papermill's last request (kernel_info) for a while after the
#: reply has gone, so that the runner shuts the kernel down while the handler still runs: an interrupt sent
#: then (jupyter_client's shutdown sends one first) is logged by ipykernel as "ERROR | KeyboardInterrupt
#: caught in kernel."
SLOW_LAST_REQUEST = """import time
kernel = get_ipython().kernel
reply = kernel.shell_handlers["kernel_info_request"]
async def slow_kernel_info(*args):
    await reply(*args)
    time.sleep(1.5)
kernel.shell_handlers["kernel_info_request"] = slow_kernel_info"""


def test_kernels_shut_down_without_an_interrupt(tmp_path, capfd):
    finishing = _tiny_notebook(tmp_path / "finishing.ipynb", [SLOW_LAST_REQUEST, "x = 1"])
    failing = _tiny_notebook(tmp_path / "failing.ipynb", [SLOW_LAST_REQUEST, "raise ValueError('real')", "y = 2"])
    out = tmp_path / "out"
    assert run_notebook(finishing, out, {"QUICK": True}).ok
    with pytest.raises(NotebookError, match=r"notebook failing failed in cell 3: ValueError: real \(In \[4\]"):
        run_notebook(failing, out, {"QUICK": True})  # a real error is still reported, with its cell
    captured = capfd.readouterr()
    printed = captured.out + captured.err  # the kernels' own output and logging come here too
    assert "KeyboardInterrupt" not in printed and "ERROR |" not in printed, printed[-3000:]


def test_the_command_lists_and_refuses_unknown_names(capsys, tmp_path):
    assert alias_main("notebooks", ["--out", "unused", "--list"]) == 0
    assert capsys.readouterr().out.split() == [p.stem for p in NOTEBOOKS]
    with pytest.raises(ValueError, match="no notebook matches"):
        alias_main("notebooks", ["--out", "unused", "--only", "99"])
    with pytest.raises(ValueError, match="no selected notebook has them"):
        alias_main("notebooks", ["--out", str(tmp_path / "never"), "--only", "01", "--param", "N_IMAGES=3"])
    assert not (tmp_path / "never").exists()  # refused before anything ran
    with pytest.raises(SystemExit):
        alias_main("notebooks", ["--out", "unused", "--quick", "--full"])


def _png_outputs(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


# ------------------------------------------------------------------------------ the notebooks' claims
# What a notebook's text says about its outputs, checked against the numbers the notebook computed (its
# figures' manifests and the files it writes), on the QUICK run of the test below. Each function gets the
# manifests by figure name and the notebook's figures folder.

def _claims_02_explorer(figures: dict, folder: Path) -> None:
    shared = figures["explorer_shared_scale"]
    maps = {row["prompt"]: row for row in shared["data"]["maps"]}
    # cell 0: "a red square" names nothing in the first scene (an orange square and a purple cross), and scores
    # lower than the scene's own objects but above zero: about +0.2 against about +0.4
    assert {(o["colour"], o["shape"]) for o in shared["images"][0]["objects"]} == {("orange", "square"),
                                                                                ("purple", "cross")}
    matching = [row for row in maps.values() if row["true_of_scene"]]
    assert maps["a red square"]["true_of_scene"] is False and len(matching) == 2
    assert 0 < maps["a red square"]["score"] < min(row["score"] for row in matching)
    assert maps["a red square"]["score"] == pytest.approx(0.2, abs=0.05)
    assert all(row["score"] == pytest.approx(0.4, abs=0.05) for row in matching)
    # cell 11: on one scale the maps' strengths do not follow S: "a purple cross" (in the scene, S about 0.39)
    # has a map whose peak is under a tenth of the strongest map's; "a red square" (not in the scene, S about
    # 0.19) a strong one whose largest share lies on the orange square
    cross, red = maps["a purple cross"], maps["a red square"]
    assert cross["score"] == pytest.approx(0.39, abs=0.01) and red["score"] == pytest.approx(0.19, abs=0.01)
    strongest = max(row["map_peak"] for row in maps.values())
    assert cross["map_peak"] < 0.1 * strongest and red["map_peak"] > 0.5 * strongest
    assert red["top_object"] == "orange square"
    # cell 19: the copy with its top two stages randomised scores below 0.1, below the trained model, and its
    # maps keep a Spearman correlation of 0.4 to 0.6 with the trained model's
    side = figures["models_side_by_side"]["data"]
    trained, randomised = side["scores"]
    assert "(top 2 randomised)" in side["models"][1]
    assert max(randomised) < 0.1 and all(r < t for r, t in zip(randomised, trained))
    assert all(0.4 <= rho <= 0.6 for rho in side["spearman"].values()), side["spearman"]


def _claims_03_concept_decomposition(figures: dict, folder: Path) -> None:
    import pandas as pd

    per_image = pd.read_csv(folder / "decomposition_study.csv").drop_duplicates("image")
    # cell 8: the concepts explain most of the sentence's map (median R² about 0.8), little of its embedding
    assert per_image["map_r2"].median() == pytest.approx(0.8, abs=0.05)
    assert per_image["text_r2"].median() < 0.05
    # cell 9: the example is the study's image whose map R² is nearest the median, its R² the study's own
    example = figures["decomposition"]["data"]["example"]
    distance = (per_image["map_r2"] - per_image["map_r2"].median()).abs()
    assert example["image"] == per_image["image"].iloc[int(distance.to_numpy().argmin())]
    assert example["median"] == pytest.approx(per_image["map_r2"].median())
    assert figures["decomposition"]["data"]["map_r2"] == pytest.approx(
        float(per_image.set_index("image").at[example["image"], "map_r2"]), abs=1e-9)


def _claims_04_attribute_count_failures(figures: dict, folder: Path) -> None:
    import pandas as pd

    from gradeclip_utils.studies.failures import tie_margin

    choices = pd.read_csv(folder / "choices_synthetic.csv")
    settings = figures["accuracy_synthetic"]["settings"]
    # cell 0: the tie margin is log(0.55 / 0.45) / logit scale: 0.0084 here, 0.0020 at CLIP's 100
    assert settings["tie_margin"] == pytest.approx(0.0084, abs=5e-5)
    assert tie_margin(100.0) == pytest.approx(0.0020, abs=5e-5)
    assert ((choices["margin"].abs() < settings["tie_margin"]) == (choices["verdict"] == "tie")).all()
    table = {row["kind"]: row for row in figures["accuracy_synthetic"]["data"]["table"]}
    assert all(row["ties"] == int((choices[choices["kind"] == kind]["verdict"] == "tie").sum())
               for kind, row in table.items())
    # cell 7: at least nine in ten relation items are ties, no relation margin reaches 0.01
    relation = choices[choices["kind"] == "relation"]
    assert table["relation"]["ties"] >= 0.9 * table["relation"]["n"] and relation["margin"].abs().max() < 0.01
    # every gallery's manifest names exactly the scenes it shows, with the margins and verdicts it prints
    for kind in ("binding", "count", "relation"):
        manifest = figures[f"gallery_{kind}"]
        rows = manifest["data"]["rows"]
        assert [image["name"] for image in manifest["images"]] == [row["image"] for row in rows]
        assert [f"scene {image['seed']}" for image in manifest["images"]] == [row["image"] for row in rows]
        shown = choices.set_index("image").loc[[row["image"] for row in rows]]
        assert list(shown["kind"]) == [kind] * len(rows)
        assert [row["verdict"] for row in rows] == list(shown["verdict"])
        assert [row["margin"] for row in rows] == pytest.approx(list(shown["margin"]))


def _claims_05_word_importance(figures: dict, folder: Path) -> None:
    data = figures["word_deletion_check"]["data"]
    # cell 12: on average removing the most important word costs most, several times a random or the least
    # important word; on the first scene it raises S for 5 of 13 prompts, 4 of them with "a" as that word,
    # and "a red cross" scores 0.11 higher as "red cross"
    drops = data["all"]["mean_drop"]
    assert drops["top"] > 0 and drops["top"] > 3 * max(drops["random"], drops["bottom"])
    first = data["first_image"]
    assert (first["prompts"], first["top_raises"]) == (13, 5)
    assert first["top_words_where_it_raises"].get("a") == 4
    rows = {row["text"]: row for row in data["first_image_rows"]}
    assert rows["a red cross"]["top_word"] == "a" and rows["a red cross"]["drop_top"] == pytest.approx(-0.11, abs=0.005)


def _claims_07_methods_faithfulness(figures: dict, folder: Path) -> None:
    import json

    # cells 0 and 3: one RISE, the evaluation's centred sum, in the gallery and in the evaluation
    config = json.loads((folder / "evaluation" / "config.json").read_text())
    gallery = figures["method_gallery"]
    assert gallery["settings"]["rise"]["centre"] is True and config["rise_centre"] is True
    labels = {row["method"]: row["label"] for row in gallery["data"]["table"]}
    assert "rise" not in labels or labels["rise"] == f"rise (masks {config['rise_masks']}, centre)"  # QUICK: no RISE
    # cell 11: Grad-ECLIP's SSIM falls to its lowest at block 1 (about 0.30), then rises with block 0 and the
    # embedding randomised (about 0.67, above the head-only stage; Spearman about 0.39); the figure says n = 2
    sanity = {row["stage"]: row for row in figures["sanity_check"]["data"]["sanity"] if row["method"] == "grad_eclip"}
    ssim = {stage: row["ssim"] for stage, row in sanity.items()}
    assert min(ssim, key=ssim.get) == "block 1" and ssim["block 1"] == pytest.approx(0.30, abs=0.02)
    assert ssim["embedding"] == pytest.approx(0.67, abs=0.02) and ssim["embedding"] > ssim["head"] > ssim["block 1"]
    assert sanity["embedding"]["spearman"] == pytest.approx(0.39, abs=0.02)
    assert "range over the 2 images" in figures["sanity_check"]["title"]


def _claims_09_classifier(figures: dict, folder: Path) -> None:
    import pandas as pd

    # "What the numbers say", first point: where each map of the one scene peaks
    one = figures["one_scene"]["data"]
    assert dict(zip(one["CLIP"]["targets"], one["CLIP"]["peak_on"])) == {
        "a red cross": "red cross", "a green circle": "green circle", "a purple square": "purple square"}
    assert dict(zip(one["classifier"]["targets"], one["classifier"]["peak_on"])) == {
        "red cross": "purple square", "green circle": "green circle", "purple square": "purple square"}
    # second point: energy over five times the area share for both models, the CLIP's above the classifier's
    summary = figures["pointing_game"]["data"]
    means = summary["means"]
    assert all(m["energy"] > 5 * m["area_share"] for m in means.values())
    assert means["CLIP"]["energy"] > means["classifier"]["energy"]
    # the exported summary is the CSV's, and the agreement table counts every scene once
    frame = pd.read_csv(folder / "classifier_localisation.csv")
    for model, group in frame.groupby("model"):
        assert group["pointing"].mean() == pytest.approx(means[model]["pointing"])
    assert sum(summary["pointing_agreement"].values()) == summary["scenes"] == frame["seed"].nunique()
    # third point: the model cards' figures
    from gradeclip_utils.resources import SYNTHETIC_CLASSIFIER_DIR, SYNTHETIC_DIR

    classifier_card = (SYNTHETIC_CLASSIFIER_DIR / "MODEL_CARD.md").read_text()
    clip_card = (SYNTHETIC_DIR / "MODEL_CARD.md").read_text()
    assert re.search(r"Grad-ECLIP pointing game \(tol. 4 px\)\s+85.3%", classifier_card)
    assert re.search(r"Grad-ECLIP pointing game \(tol. 4 px\)\s+87.3%", clip_card)
    assert re.search(r"Grad-ECLIP energy pointing game\s+32.0%", classifier_card)
    assert re.search(r"Grad-ECLIP energy pointing game\s+40.7%", clip_card)
    assert re.search(r"top-1 accuracy, colour x shape\s+98.1%", classifier_card)
    assert re.search(r"zero-shot colour x shape, top-1\s+98.4%", clip_card)


CLAIMS = {"02_explorer": _claims_02_explorer, "03_concept_decomposition": _claims_03_concept_decomposition,
          "04_attribute_count_failures": _claims_04_attribute_count_failures,
          "05_word_importance": _claims_05_word_importance, "07_methods_faithfulness": _claims_07_methods_faithfulness,
          "09_classifier": _claims_09_classifier}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_and_exports_every_figure(path, tmp_path, caplog, capfd):
    started = time.perf_counter()
    run = run_notebook(path, tmp_path, {"QUICK": True}, timeout=TIME_LIMIT)
    seconds = time.perf_counter() - started
    assert run.ok and seconds < TIME_LIMIT
    assert not [r for r in caplog.records if r.name.startswith("papermill") and r.levelno >= 30], caplog.text
    printed = "".join(capfd.readouterr())  # the kernel logs nothing at the level of errors, at shutdown either
    assert "KeyboardInterrupt" not in printed and "ERROR |" not in printed, printed[-3000:]
    executed = nbformat.read(run.executed, as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not [o for cell in code for o in cell.outputs if o["output_type"] == "error"]
    # every widget shown is in the saved widget state (a reopened copy shows it, not "model not found"),
    # and none of them is a progress bar (those are text)
    views = [o["data"][WIDGET_VIEW]["model_id"] for cell in code for o in cell.outputs if WIDGET_VIEW in o.get("data", {})]
    state = executed.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert all(view in state for view in views), [v for v in views if v not in state]
    assert not [m for m in state.values() if m["model_name"] in ("FloatProgressModel", "IntProgressModel")]
    if path.stem in ("02_explorer", "06_layers"):
        assert views, "the explorers are shown"
        images = [m for m in state.values() if m["model_name"] == "ImageModel"]
        saved = [b["data"] for m in images for b in m.get("buffers", []) if b["path"] == ["value"]]
        assert images and len(saved) == len(images), "the explorers' last figures are saved"
        assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in saved)

    manifests = load_manifests(run.figures_dir)
    assert manifests, "the notebook exported no figure"
    assert len(manifests) == _png_outputs(executed)  # every figure shown is exported, and only those
    methods = set(list_methods()["image"]) | set(list_methods()["text"])
    for manifest in manifests:
        folder = Path(manifest["_path"]).parent
        assert set(manifest["files"]) == {"png", "pdf"}
        with Image.open(folder / manifest["files"]["png"]) as png:
            assert min(png.size) > 50
        assert (folder / manifest["files"]["pdf"]).read_bytes().startswith(b"%PDF")
        assert manifest["notebook"] == path.stem and manifest["model"] == "synthetic"
        assert manifest["pretrained"] is None and manifest["parameters"]["QUICK"] is True
        assert set(manifest["parameters"]) == set(parameter_names(executed)) - {"OUT_DIR"}  # as the static test
        assert manifest["parameters"]["MODEL"] == "synthetic"
        assert manifest["package"]["version"] == gradeclip_utils.__version__
        assert manifest["description"], manifest["figure"]
        assert manifest["method"] is None or manifest["method"] in methods
        for image in manifest["images"]:
            if image["kind"] == "file":
                assert (REPO_ROOT / image["path"]).is_file()
            else:
                assert image["kind"] == "synthetic_scene" and image["recipe"], image
    if path.stem in CLAIMS:  # what the notebook's text says, against the numbers it computed
        CLAIMS[path.stem]({m["figure"]: m for m in manifests}, Path(run.figures_dir))
    if path.stem == "04_attribute_count_failures":
        check_explained_score_claims(next(m for m in manifests if m["figure"] == "explained_scores"))


def check_explained_score_claims(manifest) -> None:
    """What notebook 04 says of the probability and the contrast, against the numbers it exported: each
    contrast puts several (over 5) times more mass on the circle its first prompt names than on the other,
    on average, and each probability map is its contrast's map times s p(red) p(blue)."""
    summary, scenes = manifest["data"]["summary"], manifest["data"]["scenes"]
    assert summary["scenes"] == len(scenes) > 0
    assert summary["red rather than blue: red"] > 5 * summary["red rather than blue: blue"]
    assert summary["blue rather than red: blue"] > 5 * summary["blue rather than red: red"]
    assert summary["largest_deviation"] < 1e-4
    for scene in scenes:
        assert abs(scene["p(red)"] + scene["p(blue)"] - 1) < 1e-5
        for region in ("red", "blue", "background"):  # the same map at another scale: the same shares
            assert abs(scene[f"p(red): {region}"] - scene[f"red rather than blue: {region}"]) < 1e-4
            assert abs(scene[f"p(blue): {region}"] - scene[f"blue rather than red: {region}"]) < 1e-4
    assert manifest["settings"]["scores"] == ["probability", "contrast"]


def test_the_package_draws_text_progress_only():
    """tqdm.auto picks a widget bar in a kernel, which a saved or reloaded notebook shows as an error: the
    package's progress bars are plain text ones, in every module (the notebooks run them)."""
    package = Path(gradeclip_utils.__file__).parent
    offenders = [str(p.relative_to(package)) for p in package.rglob("*.py") if "tqdm.auto" in p.read_text()]
    assert not offenders, offenders
