"""Execute the notebooks headless and collect the executed copies and their figures.

    python -m gradeclip_utils.notebooks --out OUT [--quick] [--only 01 03] [--model ViT-B-16 --pretrained openai]

Every notebook under ``notebooks/`` has one code cell tagged "parameters" (MODEL, PRETRAINED, DEVICE,
OUT_DIR, QUICK and its study sizes). The runner inserts a cell right after it that overrides some of
them: OUT_DIR becomes ``OUT/figures/<notebook>``, and ``--quick``, ``--model``, ``--pretrained``,
``--device`` and ``--param NAME=VALUE`` set the others. The executed copy of each notebook (outputs
included, also when it fails) goes to ``OUT/notebooks/<notebook>.ipynb``; a summary of the run to
``OUT/summary.json``. A failing notebook is reported with the cell that failed and its error.

The kernel is "python3" started with this interpreter (the runner provides that kernel spec itself),
so the notebooks run in the same environment as the runner.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
KERNEL_NAME = "python3"


class NotebookError(RuntimeError):
    """A notebook failed: which one, which cell, and the error the cell raised."""

    def __init__(self, notebook: str, message: str, cell_index: int | None = None, executed: Path | None = None):
        self.notebook, self.cell_index, self.executed = notebook, cell_index, executed
        where = f" in cell {cell_index}" if cell_index is not None else ""
        saved = f" (executed copy with the traceback: {executed})" if executed is not None else ""
        super().__init__(f"notebook {notebook} failed{where}: {message}{saved}")


@dataclass
class NotebookRun:
    """The outcome of one notebook."""

    notebook: str
    ok: bool
    seconds: float
    executed: str
    figures_dir: str
    figures: int = 0
    error: str | None = None
    failed_cell: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def list_notebooks(folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """The notebooks of ``folder``, sorted by name."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no notebooks under {folder}")
    return found


def select_notebooks(names: Sequence[str] | None, folder: str | Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks whose file name starts with one of ``names`` (e.g. "01" or "03_concept"), or all."""
    notebooks = list_notebooks(folder)
    if not names:
        return notebooks
    chosen = []
    for name in names:
        matches = [p for p in notebooks if p.stem.startswith(name) or p.name == name]
        if not matches:
            raise ValueError(f"no notebook matches {name!r}; have {[p.stem for p in notebooks]}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def _literal(value: Any) -> str:
    """A Python literal for ``value``; refuses values that do not round-trip."""
    text = repr(value)
    try:
        if ast.literal_eval(text) != value:
            raise ValueError
    except (ValueError, SyntaxError):
        raise ValueError(f"parameter value {value!r} is not a plain literal (str, number, bool, None, list, "
                         "dict)") from None
    return text


def parameters_cell_index(notebook: Any) -> int:
    """Index of the one code cell tagged "parameters"."""
    tagged = [i for i, cell in enumerate(notebook.cells)
              if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"a notebook needs exactly one code cell tagged {PARAMETERS_TAG!r}; found {len(tagged)}")
    return tagged[0]


def parameter_names(notebook: Any) -> list[str]:
    """Names assigned in the parameters cell."""
    source = notebook.cells[parameters_cell_index(notebook)].source
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def inject_parameters(notebook: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of ``notebook`` with a cell after the parameters cell that assigns ``overrides``.

    Every override must name a parameter of the notebook (a typo would otherwise be ignored silently).
    """
    import copy

    import nbformat

    index = parameters_cell_index(notebook)
    known = parameter_names(notebook)
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the notebook's parameters are {known}")
    result = copy.deepcopy(notebook)
    lines = ["# Parameters set by gradeclip_utils.notebooks"] + [f"{k} = {_literal(v)}" for k, v in overrides.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [INJECTED_TAG]})
    if "id" not in notebook.cells[index]:  # notebooks older than format 4.5 have no cell ids
        cell.pop("id", None)
    result.cells.insert(index + 1, cell)
    return result


@contextlib.contextmanager
def _own_kernel_spec() -> Iterator[None]:
    """Make the "python3" kernel this interpreter for the duration (a kernel spec in a temporary
    folder put first on JUPYTER_PATH)."""
    previous = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="gradeclip-kernel-") as folder:
        spec_dir = Path(folder) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (gradeclip_utils)", "language": "python",
                "metadata": {"debugger": False}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        os.environ["JUPYTER_PATH"] = folder + (os.pathsep + previous if previous else "")
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend must draw the figures into the notebook
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


def _failed_cell(notebook: Any) -> tuple[int | None, str]:
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return index, f"{output.get('ename')}: {output.get('evalue')} (cell starts: {first[:80]!r})"
    return None, ""


def run_notebook(path: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None, *,
                 timeout: int = 1800, progress: Any = None) -> NotebookRun:
    """Execute one notebook; its figures go to ``out/figures/<name>``, its executed copy to
    ``out/notebooks/<name>.ipynb``. Raises NotebookError naming the failing cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path, out = Path(path), Path(out)
    name = path.stem
    figures_dir = (out / "figures" / name).resolve()
    executed = out / "notebooks" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    settings = {"OUT_DIR": str(figures_dir), **dict(overrides or {})}
    notebook = inject_parameters(nbformat.read(path, as_version=4), settings)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    done = {"n": 0}

    def started(cell: Any, cell_index: int) -> None:
        if cell.cell_type == "code" and progress is not None:
            done["n"] += 1
            progress.set_postfix_str(f"{name}: cell {done['n']}/{code_cells}")

    client = NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL_NAME, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}}, on_cell_execute=started)
    start = time.perf_counter()
    error, failed = None, None
    try:
        with _own_kernel_spec():
            client.execute(env=_kernel_env())
    except CellExecutionError as caught:
        failed, error = _failed_cell(notebook)
        error = error or str(caught).strip().splitlines()[-1]
    except (CellTimeoutError, DeadKernelError) as caught:
        failed = next((i for i, c in reversed(list(enumerate(notebook.cells)))
                       if c.cell_type == "code" and c.get("execution_count")), None)
        error = f"{type(caught).__name__}: {caught}"
    finally:
        nbformat.write(notebook, executed)
    seconds = time.perf_counter() - start
    figures = len(list(figures_dir.glob("*.json"))) if figures_dir.is_dir() else 0
    run = NotebookRun(name, error is None, round(seconds, 1), str(executed), str(figures_dir), figures, error,
                      failed, {k: v for k, v in settings.items() if k != "OUT_DIR"})
    if error is not None:
        raise NotebookError(name, error, failed, executed)
    return run


def run_all(out: str | Path, notebooks: Sequence[Path] | None = None, overrides: Mapping[str, Any] | None = None,
            *, timeout: int = 1800, keep_going: bool = True, progress: bool = True) -> list[NotebookRun]:
    """Execute ``notebooks`` (default: all) in order with a progress bar; writes ``out/summary.json``.
    With ``keep_going`` a failure is recorded and the next notebook runs; otherwise it raises."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notebooks = list(notebooks) if notebooks is not None else list_notebooks()
    runs: list[NotebookRun] = []
    bar = tqdm(notebooks, desc="notebooks", unit="notebook", disable=not progress, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.stem)
        start = time.perf_counter()
        try:
            runs.append(run_notebook(path, out, overrides, timeout=timeout, progress=bar))
        except NotebookError as error:
            runs.append(NotebookRun(path.stem, False, round(time.perf_counter() - start, 1), str(error.executed),
                                    str((out / "figures" / path.stem).resolve()), 0, str(error), error.cell_index,
                                    dict(overrides or {})))
            if not keep_going:
                _write_summary(out, runs)
                raise
    _write_summary(out, runs)
    return runs


def _write_summary(out: Path, runs: Sequence[NotebookRun]) -> None:
    from .export import package_version

    summary = {"package_version": package_version(), "python": sys.executable,
               "notebooks": [asdict(r) for r in runs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def format_runs(runs: Sequence[NotebookRun]) -> str:
    width = max(len(r.notebook) for r in runs) if runs else 8
    lines = [f"{'notebook'.ljust(width)}  status  seconds  figures", "-" * (width + 26)]
    for r in runs:
        lines.append(f"{r.notebook.ljust(width)}  {'ok' if r.ok else 'FAILED':6}  {r.seconds:7.1f}  {r.figures:7d}")
    for r in runs:
        if not r.ok:
            lines.append(f"\n{r.error}")
    return "\n".join(lines)


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key.strip(), value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradeclip_utils.notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder: OUT/notebooks (executed copies), OUT/figures")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="notebooks whose name starts so")
    parser.add_argument("--quick", action="store_true", help="small study sizes (QUICK=True), as in the tests")
    parser.add_argument("--model", default=None, help="MODEL for every notebook (default: the notebooks' own)")
    parser.add_argument("--pretrained", default=None, help="PRETRAINED for every notebook")
    parser.add_argument("--device", default=None, help="DEVICE for every notebook (cpu, cuda)")
    parser.add_argument("--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                        help="any other parameter, e.g. --param N_SCENES=50 (repeatable)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    args = parser.parse_args(argv)
    notebooks = select_notebooks(args.only)
    if args.list:
        print("\n".join(p.stem for p in notebooks))
        return 0
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides["QUICK"] = True
    for key, value in (("MODEL", args.model), ("PRETRAINED", args.pretrained), ("DEVICE", args.device)):
        if value is not None:
            overrides[key] = value
    overrides.update(dict(args.param))
    try:
        runs = run_all(args.out, notebooks, overrides, timeout=args.timeout, keep_going=not args.fail_fast)
    except NotebookError as error:
        print(error, file=sys.stderr)
        return 1
    print(format_runs(runs))
    print(f"\nexecuted notebooks: {Path(args.out) / 'notebooks'}\nfigures: {Path(args.out) / 'figures'}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
