"""Execute the notebooks headless and collect the executed copies and their figures.

    python -m gradeclip_utils.notebooks --out OUT [--quick | --full] [--only 01 03] [--model ViT-B-16 --pretrained openai]

Every notebook under ``notebooks/`` has one code cell tagged "parameters" (MODEL, PRETRAINED, DEVICE,
OUT_DIR, QUICK, FULL and its study sizes). The runner executes each notebook with papermill, which
inserts a cell tagged "injected-parameters" right after it: OUT_DIR becomes ``OUT/figures/<notebook>``,
and ``--quick`` (small sizes, as in the tests), ``--full`` (the full study sizes), ``--model``,
``--pretrained``, ``--device`` and ``--param NAME=VALUE`` set the others; a name that is not one of the
notebook's parameters is refused before anything runs. The executed copy of each notebook (outputs and
widget state included, also when it fails) goes to ``OUT/notebooks/<notebook>.ipynb``; a summary of the
run to ``OUT/summary.json``. A failing notebook is reported with the cell that failed and its error.

Progress: one bar over the notebooks, whose label shows the notebook, the cell being run and the last
progress line that cell printed (a long evaluation's own progress bar). The kernel is "python3" started
with this interpreter (the runner provides that kernel spec itself), so the notebooks run in the same
environment as the runner; it talks to the runner over local (IPC) sockets, not TCP.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import GradEclipError
from .records import package_version
from .resources import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"  # papermill's tag for the cell it inserts
KERNEL_NAME = "python3"
ENGINE_NAME = "gradeclip"
#: JupyterLab settings the project installs as defaults (a user's own settings still win): save the
#: widgets' state with the notebook, so that a reopened notebook shows the explorers' last figures
LAB_SETTINGS = {"@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True}}


class NotebookError(GradEclipError, RuntimeError):
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


def check_parameters(notebook: Any, overrides: Mapping[str, Any]) -> None:
    """Refuse overrides that papermill would pass on silently: a name that is not assigned in the
    notebook's parameters cell (a typo) or a value that is not a plain literal."""
    known = parameter_names(notebook)
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the notebook's parameters are {known}")
    for value in overrides.values():
        _literal(value)


@contextlib.contextmanager
def _own_kernel_spec() -> Iterator[Path]:
    """Make the "python3" kernel this interpreter for the duration (a kernel spec in a temporary
    folder put first on JUPYTER_PATH); yields the folder (the kernels' IPC sockets go there too)."""
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
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous


def install_lab_settings(app_settings_dir: str | Path | None = None) -> Path:
    """Write ``LAB_SETTINGS`` as JupyterLab default overrides of this environment (``overrides.d`` of the
    application settings folder, default ``<sys.prefix>/share/jupyter/lab/settings``); returns the file."""
    folder = Path(app_settings_dir) if app_settings_dir is not None else (
        Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings")
    target = folder / "overrides.d" / "gradeclip_utils.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(LAB_SETTINGS, indent=2) + "\n", encoding="utf-8")
    return target


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend must draw the figures into the notebook
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return env


def _ipc_kernel_manager(folder: Path) -> type:
    """A kernel manager whose kernel listens on Unix sockets in ``folder`` (no TCP, so ipykernel has
    nothing to warn about and nothing listens on the network)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        #: set by the runner's client once the kernel has answered the run's last request: then its
        #: shutdown sends no interrupt first (see ``_async_interrupt_kernel``)
        finished = False

        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        def _ip_default(self) -> str:
            return str(folder / f"kernel-{os.getpid()}-{id(self)}")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client's shutdown_kernel interrupts the kernel (SIGINT to its process group) before
            # asking it to shut down. A finished kernel has nothing to interrupt, and the signal can land
            # while it is still in the handler of papermill's last request (kernel_info: papermill waits
            # for the reply, not for the handler's end), where ipykernel turns it into a KeyboardInterrupt
            # and logs "ERROR | KeyboardInterrupt caught in kernel." (child processes would get it too). A
            # kernel that did not finish (a cell timed out, the run was stopped) is interrupted as before.
            if self.shutting_down and self.finished:
                return
            await super()._async_interrupt_kernel()

    return IPCKernelManager


class _CellProgress:
    """Shows the running notebook, its cell and the last progress line the cell printed on stderr
    (papermill hands the cells' stderr to ``write``) as the label of the runner's bar, redrawn at most
    every ``interval`` seconds for the progress lines."""

    _LINE = re.compile(r"[^\r\n]*[^\s\r\n][^\r\n]*")

    def __init__(self, name: str, code_cells: int, bar: Any = None, interval: float = 1.0) -> None:
        self.name, self.code_cells, self.bar, self.interval = name, code_cells, bar, interval
        self.cell, self.line, self.shown = 0, "", 0.0

    def cell_started(self, cell: Any = None, cell_index: int | None = None, **_: Any) -> None:
        if cell is not None and cell.get("cell_type") == "code":
            self.cell += 1
            self.line = ""
            self._show(force=True)

    def write(self, text: str) -> int:
        lines = self._LINE.findall(text)
        if lines:
            line = " ".join(lines[-1].split())
            self.line = line if len(line) <= 70 else line[:67] + "..."
            self._show()
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def label(self) -> str:
        label = f"{self.name}: cell {self.cell}/{self.code_cells}"
        return f"{label} | {self.line}" if self.line else label

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar is not None and (force or now - self.shown >= self.interval):
            self.bar.set_postfix_str(self.label)
            self.shown = now


def _register_engine() -> None:
    """papermill's nbclient engine with the runner's kernel manager, kernel environment and cell hook."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger
    from papermill.utils import remove_args

    class Client(PapermillNotebookClient):
        def execute(self, **kwargs: Any) -> Any:
            """papermill's execute (2.7), which also tells the kernel manager when the kernel has answered
            its last request, so that shutting it down sends no interrupt (``_ipc_kernel_manager``)."""
            self.reset_execution_trackers()
            if sys.platform.startswith("win"):  # https://bugs.python.org/issue37373
                asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())
            with self.setup_kernel(**kwargs):
                self.log.info(f"Executing notebook with kernel: {self.kernel_name}")
                self.papermill_execute_cells()  # stops at a failing cell, recorded for papermill to raise
                info_msg = self.wait_for_reply(self.kc.kernel_info())
                if hasattr(self.km, "finished"):  # the kernel has answered: nothing left to interrupt
                    self.km.finished = True
                self.nb.metadata["language_info"] = info_msg["content"]["language_info"]
                self.set_widgets_metadata()
            return self.nb

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            env = kwargs.pop("kernel_env", None)
            kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
            client = Client(nb_man, timeout=execution_timeout, startup_timeout=start_timeout,
                            kernel_name=kernel_name, log=logger, log_output=log_output,
                            stdout_file=stdout_file, stderr_file=stderr_file, **kwargs)
            return client.execute(env=env)

    papermill_engines.register(ENGINE_NAME, Engine)


def _source_index(index: int | None, parameters: int) -> int | None:
    """A cell's index in the notebook file, from its index in the notebook papermill ran (which has the
    injected cell right after the parameters cell)."""
    if index is None or index <= parameters:
        return index
    return index - 1 if index > parameters + 1 else None  # None: the injected cell itself


def run_notebook(path: str | Path, out: str | Path, overrides: Mapping[str, Any] | None = None, *,
                 timeout: int = 1800, progress: Any = None) -> NotebookRun:
    """Execute one notebook with papermill; its figures go to ``out/figures/<name>``, its executed copy
    to ``out/notebooks/<name>.ipynb``. ``progress``: a tqdm bar whose label follows the cells. Raises
    NotebookError naming the failing cell (its index in the notebook file, ``nbformat``'s ``cells[i]``,
    and its "In [n]" in the executed copy) and its error."""
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    path, out = Path(path), Path(out)
    name = path.stem
    figures_dir = (out / "figures" / name).resolve()
    executed = out / "notebooks" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    settings = {"OUT_DIR": str(figures_dir), **dict(overrides or {})}
    source = nbformat.read(path, as_version=4)
    parameters = parameters_cell_index(source)
    check_parameters(source, settings)
    code_cells = sum(cell.cell_type == "code" for cell in source.cells) + 1  # and papermill's injected cell
    reporter = _CellProgress(name, code_cells, progress)
    current = {"index": None}

    def started(cell: Any = None, cell_index: int | None = None, **_: Any) -> None:
        current["index"] = cell_index
        reporter.cell_started(cell, cell_index)

    _register_engine()
    start = time.perf_counter()
    error, failed = None, None
    try:
        with _own_kernel_spec() as folder:
            papermill.execute_notebook(
                str(path), str(executed), parameters=settings, engine_name=ENGINE_NAME, kernel_name=KERNEL_NAME,
                progress_bar=False, log_output=False, stderr_file=reporter, start_timeout=120,
                execution_timeout=timeout, request_save_on_cell_execute=True,
                resources={"metadata": {"path": str(path.parent)}}, kernel_manager_class=_ipc_kernel_manager(folder),
                kernel_env=_kernel_env(), on_cell_start=started, coalesce_streams=True)
    except PapermillExecutionError as caught:
        failed = _source_index(caught.cell_index, parameters)
        first = caught.source.strip().splitlines()[0] if caught.source.strip() else ""
        error = (f"{caught.ename}: {caught.evalue} (In [{caught.exec_count}] of the executed copy, cell starts: "
                 f"{first[:80]!r})")
    except (CellTimeoutError, DeadKernelError) as caught:
        failed = _source_index(current["index"], parameters)
        error = f"{type(caught).__name__}: {caught}"
    seconds = time.perf_counter() - start
    figures = len(list(figures_dir.glob("*.json"))) if figures_dir.is_dir() else 0
    run = NotebookRun(name, error is None, round(seconds, 1), str(executed), str(figures_dir), figures, error,
                      failed, {k: v for k, v in settings.items() if k != "OUT_DIR"})
    if error is not None:
        raise NotebookError(name, error, failed, executed)
    return run


#: parameters every notebook has; others given to ``run_all`` go to the notebooks that have them
COMMON_PARAMETERS = ("MODEL", "PRETRAINED", "DEVICE", "OUT_DIR", "QUICK", "FULL")


def overrides_per_notebook(notebooks: Sequence[Path], overrides: Mapping[str, Any] | None) -> dict[Path, dict]:
    """Each notebook's share of ``overrides``: the common parameters go to every notebook, any other name
    to the notebooks whose parameters cell assigns it. A name no selected notebook has is refused (a
    typo), as is a value that is not a plain literal, before anything runs."""
    import nbformat

    overrides = dict(overrides or {})
    names = {path: parameter_names(nbformat.read(path, as_version=4)) for path in notebooks}
    unknown = [k for k in overrides if k not in COMMON_PARAMETERS and not any(k in n for n in names.values())]
    if unknown:
        raise ValueError(f"unknown parameters {unknown}: no selected notebook has them "
                         f"({', '.join(p.stem for p in notebooks)})")
    for value in overrides.values():
        _literal(value)
    return {path: {k: v for k, v in overrides.items() if k in COMMON_PARAMETERS or k in names[path]}
            for path in notebooks}


def run_all(out: str | Path, notebooks: Sequence[Path] | None = None, overrides: Mapping[str, Any] | None = None,
            *, timeout: int = 1800, keep_going: bool = True, progress: bool = True) -> list[NotebookRun]:
    """Execute ``notebooks`` (default: all) in order with a progress bar; writes ``out/summary.json``.
    With ``keep_going`` a failure is recorded and the next notebook runs; otherwise it raises."""
    from tqdm import tqdm  # text: the runner's progress is for a terminal

    out = Path(out)
    notebooks = list(notebooks) if notebooks is not None else list_notebooks()
    shares = overrides_per_notebook(notebooks, overrides)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[NotebookRun] = []
    started = time.perf_counter()
    bar = tqdm(notebooks, desc="notebooks", unit="notebook", disable=not progress, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.stem)
        start = time.perf_counter()
        try:
            runs.append(run_notebook(path, out, shares[path], timeout=timeout, progress=bar))
        except NotebookError as error:
            runs.append(NotebookRun(path.stem, False, round(time.perf_counter() - start, 1), str(error.executed),
                                    str((out / "figures" / path.stem).resolve()), 0, str(error), error.cell_index,
                                    shares[path]))
            if not keep_going:
                _write_summary(out, runs, time.perf_counter() - started)
                raise
    _write_summary(out, runs, time.perf_counter() - started)
    return runs


def _write_summary(out: Path, runs: Sequence[NotebookRun], seconds: float) -> None:
    summary = {"package_version": package_version(), "python": sys.executable, "seconds": round(seconds, 1),
               "cpu_count": os.cpu_count(), "load_average": _load_average(), "notebooks": [asdict(r) for r in runs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages at the end of the run (None where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def format_runs(runs: Sequence[NotebookRun]) -> str:
    width = max(len(r.notebook) for r in runs) if runs else 8
    lines = [f"{'notebook'.ljust(width)}  status  seconds  figures", "-" * (width + 26)]
    for r in runs:
        lines.append(f"{r.notebook.ljust(width)}  {'ok' if r.ok else 'FAILED':6}  {r.seconds:7.1f}  {r.figures:7d}")
    for r in runs:
        if not r.ok:
            lines.append(f"\n{r.error}")
    return "\n".join(lines)



def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``gradeclip notebooks`` on its parsed arguments (the options are declared in ``cli/commands.py``); the exit status."""
    if args.install_lab_settings:
        print("wrote", install_lab_settings())
        return 0
    notebooks = select_notebooks(args.only)
    if args.list:
        print("\n".join(p.stem for p in notebooks))
        return 0
    if not args.out:
        parser.error("--out is required to run the notebooks")
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides["QUICK"] = True
    if args.full:
        overrides["FULL"] = True
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
    print(f"\n{len(runs)} notebooks in {sum(r.seconds for r in runs):.0f} s")
    print(f"executed notebooks: {Path(args.out) / 'notebooks'}\nfigures: {Path(args.out) / 'figures'}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":  # the `gradeclip notebooks` alias (cli/commands.py declares its options)
    from .cli import alias

    sys.exit(alias("notebooks"))
