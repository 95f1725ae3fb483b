"""The notebooks: committed clean, each executes top to bottom headless on the embedded synthetic CLIP
(QUICK study sizes), and every figure it draws is exported with a manifest that describes it."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

import gradeclip_utils
from gradeclip_utils.export import REPO_ROOT, load_manifests
from gradeclip_utils.methods import list_methods
from gradeclip_utils.notebooks import (INJECTED_TAG, NotebookError, inject_parameters, list_notebooks, main,
                                       parameter_names, parameters_cell_index, run_all, run_notebook)

NOTEBOOKS = list_notebooks()
REQUIRED_PARAMETERS = {"MODEL", "PRETRAINED", "DEVICE", "OUT_DIR", "QUICK"}
#: seconds one notebook may take in QUICK mode (they take 20-70 s on two busy cores)
TIME_LIMIT = 240


def test_the_collection():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quick_start", "02_explorer", "03_concept_decomposition", "04_attribute_count_failures",
        "05_word_importance", "06_layers", "07_methods_faithfulness"]


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
    assert values["QUICK"] is False and values["OUT_DIR"] == f"outputs/figures/{path.stem}"


def test_injected_parameters_follow_the_parameters_cell():
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    injected = inject_parameters(notebook, {"QUICK": True, "OUT_DIR": "/tmp/x"})
    index = parameters_cell_index(notebook)
    cell = injected.cells[index + 1]
    assert cell.metadata["tags"] == [INJECTED_TAG] and len(injected.cells) == len(notebook.cells) + 1
    assert "QUICK = True" in cell.source and "OUT_DIR = '/tmp/x'" in cell.source
    nbformat.validate(injected)
    assert len(notebook.cells) == len(injected.cells) - 1  # the original is left alone
    with pytest.raises(ValueError, match="unknown parameters"):
        inject_parameters(notebook, {"QIUCK": True})
    with pytest.raises(ValueError, match="plain literal"):
        inject_parameters(notebook, {"QUICK": object()})


def _tiny_notebook(path: Path, body: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_markdown_cell("# test"),
                      nbformat.v4.new_code_cell("OUT_DIR = 'x'\nQUICK = False", metadata={"tags": ["parameters"]})]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in body]
    nbformat.write(notebook, path)
    return path


def test_a_failing_notebook_is_named_with_its_cell(tmp_path):
    good = _tiny_notebook(tmp_path / "good.ipynb", ["import sys\nprint(sys.executable)\nprint(QUICK)"])
    bad = _tiny_notebook(tmp_path / "bad.ipynb", ["x = 1", "raise RuntimeError('boom')", "y = 2"])
    out = tmp_path / "out"
    with pytest.raises(NotebookError) as caught:
        run_notebook(bad, out, {"QUICK": True})
    message = str(caught.value)
    assert "notebook bad failed in cell 4" in message and "RuntimeError: boom" in message
    executed = nbformat.read(out / "notebooks" / "bad.ipynb", as_version=4)
    assert executed.cells[4].outputs[0]["output_type"] == "error"
    assert executed.cells[5].execution_count is None  # nothing ran after the failure
    runs = run_all(out, [good, bad], {"QUICK": True}, progress=False)
    assert [(r.notebook, r.ok, r.failed_cell) for r in runs] == [("good", True, None), ("bad", False, 4)]
    printed = nbformat.read(out / "notebooks" / "good.ipynb", as_version=4).cells[3].outputs[0]["text"]
    import sys

    assert printed.split() == [sys.executable, "True"]  # the runner's own interpreter, the injected value
    assert (out / "summary.json").is_file()


def test_the_command_lists_and_refuses_unknown_names(capsys):
    assert main(["--out", "unused", "--list"]) == 0
    assert capsys.readouterr().out.split() == [p.stem for p in NOTEBOOKS]
    with pytest.raises(ValueError, match="no notebook matches"):
        main(["--out", "unused", "--only", "99"])


def _png_outputs(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_and_exports_every_figure(path, tmp_path):
    started = time.perf_counter()
    run = run_notebook(path, tmp_path, {"QUICK": True}, timeout=TIME_LIMIT)
    seconds = time.perf_counter() - started
    assert run.ok and seconds < TIME_LIMIT
    executed = nbformat.read(run.executed, as_version=4)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not [o for cell in code for o in cell.outputs if o["output_type"] == "error"]

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
        assert manifest["parameters"]["MODEL"] == "synthetic"
        assert manifest["package"]["version"] == gradeclip_utils.__version__
        assert manifest["description"], manifest["figure"]
        assert manifest["method"] is None or manifest["method"] in methods
        for image in manifest["images"]:
            if image["kind"] == "file":
                assert (REPO_ROOT / image["path"]).is_file()
            else:
                assert image["kind"] == "synthetic_scene" and image["recipe"], image
