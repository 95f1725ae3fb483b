"""A "nothing moved" check for refactorings: fingerprint what the package computes, compare two fingerprints.

    cd REPO && PYTHONPATH=$PWD python scripts/fingerprint.py --out DIR [--only eval_small,published,notebooks,api]
    python scripts/fingerprint.py --compare BASE NEW [--atol 1e-9] [--only ...]

Before a refactoring, run ``--out BASE`` on the unchanged tree; after it, run the same script with
``--out NEW`` from the refactored tree's root (the package, notebooks and data of the current
directory are fingerprinted, whichever checkout the script itself lies in), then ``--compare BASE
NEW``. The fingerprint goes through the package's stable public entry points only (``load_model``,
``explain_image``, ``explain_text``, ``encode_texts``, ``list_methods``, ``python -m
gradeclip_utils.evaluate``, the notebooks run with papermill), so that it does not depend on where
module internals live. DIR holds:

``eval_small/``
    ``per_image.csv``, ``sanity.csv``, ``config.json`` and ``summary.md`` of a small evaluation of every
    default method on 8 synthetic scenes (RISE 20 masks, M2IB 2 steps x 2 samples, 2 tie seeds, the
    sanity check on one image, no timing), run as ``python -m gradeclip_utils.evaluate``.
``published/``
    the same files for the settings of the published run (docs/results/config.json: batch size 16,
    tolerance 4, RISE 300 masks, M2IB 10 x 10, seed 0, 3 tie seeds) on its first 16 scenes; its
    per-image values agree with docs/results/per_image.csv's rows for those scenes (pointing games,
    IoU and AUCs to the CSV's 7 digits, energy within 2e-6) where this script was written.
``notebooks/<notebook>/<figure>.npz``
    the data of every figure the seven notebooks export, each notebook run QUICK (``QUICK=True``)
    headless with papermill from a temporary copy whose first cell (injected here, see
    ``install_figure_dump``) wraps ``FigureExporter.save`` to write, before the figure is saved, every
    axes' images (``get_array``, extent, colour limits), lines (xy data, colour), patches (bars as
    x, y, width, height; others as vertices), collections (offsets, arrays, segments, paths, colours),
    limits, ticks and positions, the explanation passed to ``save`` (raw maps, scores, importances),
    the numbers of its ``data`` argument, and the texts (titles, labels, tick labels, legends,
    annotations, the manifest's method, prompts, settings and images) as one JSON string. The
    evaluation CSVs a notebook writes under its OUT_DIR are copied beside its figures.
``api/*.npz``
    direct outputs on ``data/samples/three_shapes.png`` with the embedded model (``load_model()``):
    ``explain_image`` for every registered image method (RISE 50 masks, M2IB 2 steps x 2 samples) and
    for Grad-ECLIP's official mode, out_proj q and k, layers (0, 3), the model's resolution and two
    images at once (maps, normalised heat maps, scores); ``explain_text`` for every registered text
    method (token and word importances, scores, words); ``encode_texts``; ``list_methods``.

Left out because they measure time (and differ from run to run): ``timing.csv``, ``run.json``, figures
named ``timing*`` (notebook 07's speed plot), settings or data entries named like ``seconds``,
``time``, ``duration`` or ``elapsed`` (the explorer widgets record how long a map took), and durations
written in texts ("0.07 s" in the method comparison's panel titles becomes "<seconds>"). Absolute
paths (the temporary output folders, the repository root) are replaced by ``<OUT>`` and ``<ROOT>``;
the evaluations run with a relative ``--out`` so that the command line their summary quotes is the
same everywhere. ``DIR/_run.json`` (commit, seconds per part) is for information and never compared.

Determinism is pinned here: one thread (OMP/MKL/OpenBLAS variables for every process, and
``torch.set_num_threads(1)`` in this process and in the notebook kernels), no GPU
(``CUDA_VISIBLE_DEVICES`` empty: DEVICE=None would otherwise pick CUDA where there is one),
``PYTHONHASHSEED=0``, and Python's, numpy's and torch's global generators seeded with 0 before any
work (the package seeds its own random draws). Two runs of the same tree on the same machine give
bit-identical folders; compare fingerprints made on the same machine and environment (another CPU
or library version may move the last bits).

``--compare`` checks every file of BASE against NEW: CSVs column by column (numeric columns: the
largest absolute difference; other columns exactly), npz files array by array (shape, dtype, the
largest absolute difference, bit-equality; string arrays such as the texts exactly), JSON files
as parsed values and other text files exactly. It prints one row per file with its worst array or
column, lists missing and extra files, and exits 1 when a file is missing or something differs by
more than ``--atol`` (default 1e-9); files whose every value is bit-equal are reported
"bit-identical". Run time: about 4 minutes of CPU time on one core, more on a busy machine
(``--only`` runs some parts; ``DIR/_run.json`` records each part's seconds).
"""

from __future__ import annotations

import os

#: fixed for this process (set before numpy and torch start their thread pools) and every process it starts
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
              "PYTHONWARNINGS": "ignore::DeprecationWarning"}
if __name__ == "__main__":  # not when a notebook kernel loads this file for install_figure_dump
    os.environ.update(PINNED_ENV)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import numpy as np  # noqa: E402

PARTS = ("eval_small", "published", "notebooks", "api")
SCRIPT = Path(__file__).resolve()
EVALUATE = ("-m", "gradeclip_utils.evaluate")
#: the fixed small evaluation: every default method, one image for the sanity check, no timing
EVAL_SMALL = ("-n", "8", "--batch-size", "4", "--rise-masks", "20", "--m2ib-steps", "2", "--m2ib-samples", "2",
              "--tie-seeds", "2", "--sanity-images", "1", "--timing-images", "0", "--threads", "1", "--device", "cpu",
              "--seed", "0")
#: docs/results/config.json's settings (batch size 16, tolerance 4, RISE 300 masks centred, M2IB 10 x 10,
#: seed 0, 3 tie seeds, fp32, project protocol) on the published run's first 16 scenes (the scenes are a
#: prefix-stable list: -n 16 gives the first 16 of its 100)
PUBLISHED = ("-n", "16", "--batch-size", "16", "--tolerance", "4", "--rise-masks", "300", "--m2ib-steps", "10",
             "--m2ib-samples", "10", "--seed", "0", "--tie-seeds", "3", "--precision", "fp32", "--protocol", "project",
             "--sanity-images", "0", "--timing-images", "0", "--threads", "1", "--device", "cpu")
EVAL_FILES = ("per_image.csv", "sanity.csv", "config.json", "summary.md")  # not timing.csv, run.json: times
#: CSVs a notebook's own evaluation writes under its OUT_DIR (its timing.csv and run.json are times)
NOTEBOOK_TABLES = ("per_image.csv", "sanity.csv")
#: figures that plot measured times
SKIP_FIGURES = re.compile(r"^timing")
#: a duration written into a text (the method comparison's panel titles show each method's "0.07 s")
TIME_TEXT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?\s?(?:s|ms|µs|sec|seconds?)\b")
#: settings and data entries that hold a measured time
TIME_KEY = re.compile(r"(^|_)(seconds?|duration|elapsed|time|ms|per_second)($|_)", re.IGNORECASE)
SAMPLE_IMAGE = "data/samples/three_shapes.png"
PROMPTS = ["a red circle", "a blue square"]
CAPTIONS = ["a red circle and a blue square", "a yellow star"]
FAST_IMAGE_OPTIONS = {"rise": {"masks": 50}, "m2ib": {"steps": 2, "samples": 2}}
FAST_TEXT_OPTIONS = {"m2ib": {"steps": 2, "samples": 2}}
KERNEL_NAME = "fingerprint-python"


def seed_everything() -> None:
    """One thread and seeded global generators (numpy and torch are imported here, after PINNED_ENV)."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- sanitising


class Scrubber:
    """Replaces the absolute paths that differ between runs (temporary folders, the repository root) and
    the durations written in texts by placeholders, and drops entries that hold measured times."""

    def __init__(self, replacements: dict[str, str]) -> None:
        # longest first, so that a folder inside another gets its own placeholder
        self.replacements = sorted(((k, v) for k, v in replacements.items() if k), key=lambda kv: -len(kv[0]))

    def text(self, value: str) -> str:
        for old, new in self.replacements:
            value = value.replace(old, new)
        return TIME_TEXT.sub("<seconds>", value)

    def value(self, value: Any) -> Any:
        """A JSON value with paths replaced and time entries dropped (numbers kept as they are)."""
        if isinstance(value, dict):
            return {str(k): self.value(v) for k, v in value.items() if not TIME_KEY.search(str(k))}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Path):
            return self.text(str(value))
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, np.generic):
            return self.value(value.item())
        if isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "tolist")):
            return self.value(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).tolist())
        return f"<{type(value).__name__}>"


def _json(value: Any) -> np.ndarray:
    return np.array(json.dumps(value, sort_keys=True, ensure_ascii=False, indent=1))


def _numeric(value: Any) -> np.ndarray | None:
    """``value`` as a numeric array, or None when it is not numbers."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return None
    return array if array.dtype.kind in "biuf" else None


def _flatten_numbers(prefix: str, value: Any, arrays: dict[str, np.ndarray], rest: dict[str, Any],
                     scrub: Scrubber) -> None:
    """Numbers of a nested dict/list value into ``arrays`` (key ``prefix.a.b``), the rest into ``rest``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not TIME_KEY.search(str(key)):
                _flatten_numbers(f"{prefix}.{key}", item, arrays, rest, scrub)
        return
    array = _numeric(value)
    if array is not None:
        arrays[prefix] = array
    else:
        rest[prefix] = scrub.value(value)


def _tensor_list(value: Any) -> list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in value]
    return [np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)]


def _sha256(picture: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(picture)).tobytes()).hexdigest()


def _describe_image(image: Any, scrub: Scrubber) -> Any:
    """A figure input image as text: a path, a synthetic scene's seed, or a picture's pixel hash."""
    if isinstance(image, (str, Path)):
        return scrub.text(str(image))
    if hasattr(image, "seed") and hasattr(image, "image"):
        return {"scene": int(image.seed), "sha256": _sha256(image.image)}
    if hasattr(image, "size") and hasattr(image, "mode"):  # a PIL picture
        return {"picture": list(image.size), "mode": image.mode, "sha256": _sha256(image)}
    if isinstance(image, dict):
        return scrub.value(image)
    return f"<{type(image).__name__}>"


# ----------------------------------------------------------------------------------------------- figures


def _rgba(colours: Any) -> np.ndarray:
    from matplotlib.colors import to_rgba_array

    try:
        return to_rgba_array(colours)
    except (ValueError, TypeError):
        return np.zeros((0, 4))


def _concatenated(pieces: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) point arrays (path vertices, line segments) concatenated, and each one's length."""
    vertices = [np.asarray(p, dtype=float).reshape(-1, 2) for p in pieces]
    lengths = np.array([len(v) for v in vertices], dtype=np.int64)
    return (np.concatenate(vertices) if vertices else np.zeros((0, 2))), lengths


def figure_record(fig: Any, call: dict[str, Any], scrub: Scrubber) -> dict[str, np.ndarray]:
    """The data behind a matplotlib figure as named arrays, its texts as one JSON string (key "texts")
    and what ``FigureExporter.save`` was told about it as another (key "call")."""
    from matplotlib.axes import Axes
    from matplotlib.collections import LineCollection, QuadMesh
    from matplotlib.patches import Rectangle

    fig.draw_without_rendering()  # ticks, tick labels and layout, as saving resolves them
    arrays: dict[str, np.ndarray] = {}
    texts: dict[str, Any] = {"suptitle": fig.get_suptitle(),
                             "figure_texts": [t.get_text() for t in fig.texts],
                             "figure_legends": [[t.get_text() for t in lg.get_texts()] for lg in fig.legends],
                             "axes": []}
    arrays["figure.size_inches"] = np.asarray(fig.get_size_inches(), dtype=float)
    axes, seen = [], set()
    for ax in fig.findobj(lambda artist: isinstance(artist, Axes)):  # insets and subfigures' axes too
        if id(ax) not in seen:
            seen.add(id(ax))
            axes.append(ax)
    for i, ax in enumerate(axes):
        p = f"ax{i:02d}"
        arrays[f"{p}.position"] = np.asarray(ax.get_position().bounds, dtype=float)
        arrays[f"{p}.xlim"] = np.asarray(ax.get_xlim(), dtype=float)
        arrays[f"{p}.ylim"] = np.asarray(ax.get_ylim(), dtype=float)
        arrays[f"{p}.xticks"] = np.asarray(ax.get_xticks(), dtype=float)
        arrays[f"{p}.yticks"] = np.asarray(ax.get_yticks(), dtype=float)
        legend = ax.get_legend()
        entry: dict[str, Any] = {
            "visible": ax.get_visible(), "axis_on": ax.axison,
            "title": [ax.get_title(loc) for loc in ("left", "center", "right")],
            "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
            "yscale": ax.get_yscale(),
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
            "texts": [t.get_text() for t in ax.texts],
            "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else None,
            "images": [], "lines": [], "patches": [], "collections": [],
        }
        arrays[f"{p}.text_positions"] = np.asarray([t.get_position() for t in ax.texts], dtype=float).reshape(-1, 2)
        for j, image in enumerate(ax.images):
            data = image.get_array()
            arrays[f"{p}.image{j}"] = np.asarray(np.ma.getdata(data))
            if np.ma.is_masked(data):
                arrays[f"{p}.image{j}.mask"] = np.asarray(np.ma.getmaskarray(data))
            arrays[f"{p}.image{j}.extent"] = np.asarray(image.get_extent(), dtype=float)
            arrays[f"{p}.image{j}.clim"] = np.asarray([np.nan if c is None else c for c in image.get_clim()],
                                                      dtype=float)
            entry["images"].append({"cmap": image.get_cmap().name, "alpha": _alpha(image.get_alpha()),
                                    "interpolation": image.get_interpolation()})
        for j, line in enumerate(ax.lines):
            arrays[f"{p}.line{j}"] = np.asarray(line.get_xydata(), dtype=float)
            arrays[f"{p}.line{j}.color"] = _rgba(line.get_color())
            entry["lines"].append({"label": line.get_label(), "linestyle": line.get_linestyle(),
                                   "marker": str(line.get_marker())})
        for j, patch in enumerate(ax.patches):
            if isinstance(patch, Rectangle):
                geometry = [patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()]
                arrays[f"{p}.patch{j}"] = np.asarray(geometry, dtype=float)
            else:
                arrays[f"{p}.patch{j}"] = np.asarray(
                    patch.get_patch_transform().transform(patch.get_path().vertices), dtype=float)
            arrays[f"{p}.patch{j}.facecolor"] = _rgba(patch.get_facecolor())
            entry["patches"].append({"type": type(patch).__name__, "label": patch.get_label()})
        for j, collection in enumerate(ax.collections):
            c = f"{p}.collection{j}"
            arrays[f"{c}.offsets"] = np.asarray(collection.get_offsets(), dtype=float)
            values = collection.get_array()
            if values is not None:
                arrays[f"{c}.array"] = np.asarray(np.ma.getdata(values))
            if isinstance(collection, QuadMesh):
                arrays[f"{c}.coordinates"] = np.asarray(collection.get_coordinates(), dtype=float)
            elif isinstance(collection, LineCollection):
                arrays[f"{c}.segments"], arrays[f"{c}.segment_lengths"] = _concatenated(collection.get_segments())
            else:
                arrays[f"{c}.paths"], arrays[f"{c}.path_lengths"] = _concatenated(
                    path.vertices for path in collection.get_paths())
            arrays[f"{c}.facecolors"] = _rgba(collection.get_facecolor())
            entry["collections"].append({"type": type(collection).__name__, "label": collection.get_label()})
        texts["axes"].append(entry)
    explanation = call.pop("explanation", None)
    if explanation is not None:
        for attribute in ("raw", "scores", "token_importance", "word_importance"):
            if getattr(explanation, attribute, None) is not None:
                for k, array in enumerate(_tensor_list(getattr(explanation, attribute))):
                    arrays[f"explanation.{attribute}{k}"] = array
    rest: dict[str, Any] = {}
    _flatten_numbers("data", call.pop("data", None) or {}, arrays, rest, scrub)
    described = [_describe_image(image, scrub) for image in (call.pop("images", None) or [])]
    record = {key: scrub.value(value) for key, value in call.items()}
    record.update(images=described, data_other=rest)
    arrays["texts"] = _json(scrub.value(texts))
    arrays["call"] = _json(record)
    return arrays


def _alpha(alpha: Any) -> Any:
    return None if alpha is None else (float(alpha) if np.ndim(alpha) == 0 else "<array>")


def install_figure_dump(folder: str, replacements: dict[str, str]) -> None:
    """Wrap ``FigureExporter.save`` (``show`` goes through it) so that every exported figure's data goes to
    ``folder/<figure>.npz`` before the figure is saved. Runs inside a notebook's kernel (the injected cell);
    seeds the generators and pins the threads there too."""
    from gradeclip_utils.export import FigureExporter

    seed_everything()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    scrub = Scrubber(replacements)
    original = FigureExporter.save
    counts: dict[str, int] = {}

    def save(self: Any, fig: Any, name: str, **manifest: Any) -> Any:
        if not SKIP_FIGURES.search(name):
            counts[name] = counts.get(name, 0) + 1
            stem = name if counts[name] == 1 else f"{name}.{counts[name]}"  # the same name exported again
            np.savez_compressed(out / f"{stem}.npz", **figure_record(fig, dict(manifest), scrub))
        return original(self, fig, name, **manifest)

    FigureExporter.save = save


INJECTED_CELL = """\
# injected by scripts/fingerprint.py (not part of the notebook): every exported figure's data to an npz
import importlib.util as _fingerprint_util
_fingerprint_spec = _fingerprint_util.spec_from_file_location("_fingerprint", {script!r})
_fingerprint = _fingerprint_util.module_from_spec(_fingerprint_spec)
_fingerprint_spec.loader.exec_module(_fingerprint)
_fingerprint.install_figure_dump({folder!r}, {replacements!r})
"""


@contextlib.contextmanager
def _kernel_spec(folder: Path) -> Iterator[None]:
    """A kernel spec running this interpreter, first on JUPYTER_PATH, and the kernel's environment: as the
    package's notebook runner, no MPLBACKEND (the inline backend draws the figures)."""
    spec_dir = folder / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "fingerprint", "language": "python", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "MPLBACKEND")}
    os.environ["JUPYTER_PATH"] = str(folder)
    os.environ.pop("MPLBACKEND", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ipc_kernel_manager(folder: Path) -> type:
    """A kernel manager whose kernel listens on Unix sockets in ``folder`` rather than local TCP ports."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        def _ip_default(self) -> str:
            return str(folder / f"kernel-{os.getpid()}-{id(self)}")

    return IPCKernelManager


def run_notebooks(root: Path, dest: Path, scratch: Path) -> list[str]:
    """Every notebook of ``root/notebooks`` QUICK with the figure dump injected; returns the failures."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    failures = []
    notebooks = sorted(p for p in (root / "notebooks").glob("*.ipynb") if not p.name.startswith("."))
    with _kernel_spec(scratch / "jupyter"):
        for path in notebooks:
            name = path.stem
            figures = scratch / "figures" / name
            replacements = {str(figures): "<OUT>", str(scratch): "<OUT>", str(root): "<ROOT>"}
            notebook = nbformat.read(path, as_version=4)
            source = INJECTED_CELL.format(script=str(SCRIPT), folder=str(dest / name), replacements=replacements)
            notebook.cells.insert(0, nbformat.v4.new_code_cell(source))
            copy = scratch / "copies" / path.name
            for folder in (copy.parent, scratch / "executed"):
                folder.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, copy)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(str(copy), str(scratch / "executed" / path.name),
                                           parameters={"QUICK": True, "OUT_DIR": str(figures)},
                                           kernel_name=KERNEL_NAME, cwd=str(root / "notebooks"), progress_bar=False,
                                           log_output=False, start_timeout=120, execution_timeout=1800,
                                           kernel_manager_class=_ipc_kernel_manager(scratch / "jupyter"))
            except PapermillExecutionError as error:
                failures.append(f"{name}: {error.ename}: {error.evalue}")
            print(f"  notebook {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
            scrub = Scrubber(replacements)
            for table in sorted(figures.rglob("*.csv")) if figures.is_dir() else []:
                if table.name in NOTEBOOK_TABLES:
                    target = dest / name / table.relative_to(figures)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(scrub.text(table.read_text(encoding="utf-8")), encoding="utf-8")
    return failures


# ----------------------------------------------------------------------------------------------- evaluation


def run_evaluation(root: Path, dest: Path, scratch: Path, flags: tuple[str, ...]) -> None:
    """``python -m gradeclip_utils.evaluate FLAGS --out run`` in a scratch folder (a relative --out, so that
    the command its summary quotes is the same everywhere); keeps EVAL_FILES."""
    scratch.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *EVALUATE, *flags, "--out", "run"]
    done = subprocess.run(command, cwd=scratch, env=_environment(root), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    scrub = Scrubber({str(scratch): "<OUT>", str(root): "<ROOT>"})
    dest.mkdir(parents=True, exist_ok=True)
    for name in EVAL_FILES:
        source = scratch / "run" / name
        if source.exists():
            (dest / name).write_text(scrub.text(source.read_text(encoding="utf-8")), encoding="utf-8")


def _environment(root: Path) -> dict[str, str]:
    """The environment of the processes this script starts: the pinned variables, and the package of ``root``
    first on the path (the venv may have another checkout installed in editable mode)."""
    env = dict(os.environ)
    env.update(PINNED_ENV)
    env["PYTHONPATH"] = str(root)
    return env


# ----------------------------------------------------------------------------------------------- api


def _save_image_explanation(path: Path, explanation: Any, scrub: Scrubber) -> None:
    arrays = {f"raw{i}": m.numpy() for i, m in enumerate(explanation.raw)}
    arrays.update(scores=explanation.scores.numpy(),
                  heatmaps=np.stack([explanation.heatmap(b, k) for b in range(len(explanation.raw))
                                     for k in range(len(explanation.prompts))]))
    if len(set(explanation.grid_sizes)) == 1:
        arrays["maps"] = explanation.maps.numpy()
    arrays["texts"] = _json({"prompts": explanation.prompts, "settings": scrub.value(explanation.settings),
                             "images": [_describe_image(p, scrub) for p in explanation.images]})
    np.savez_compressed(path, **arrays)


def _save_text_explanation(path: Path, explanation: Any, scrub: Scrubber) -> None:
    arrays = {"scores": explanation.scores.numpy(), "token_importance": explanation.token_importance.numpy(),
              "word_importance": explanation.word_importance.numpy()}
    for b in range(explanation.scores.shape[0]):
        for k in range(len(explanation.texts)):
            pair = explanation.pair(b, k)
            arrays[f"pair{b}_{k}.word_importance"] = np.asarray(pair.word_importance)
            arrays[f"pair{b}_{k}.score"] = np.asarray(pair.score)
    arrays["texts"] = _json({"texts": explanation.texts, "tokens": explanation.tokens, "words": explanation.words,
                             "settings": scrub.value(explanation.settings)})
    np.savez_compressed(path, **arrays)


def run_api(root: Path, dest: Path) -> None:
    """Direct outputs of the public functions on the sample scene with the embedded model."""
    import gradeclip_utils as ge
    from PIL import Image

    seed_everything()
    scrub = Scrubber({str(root): "<ROOT>"})
    dest.mkdir(parents=True, exist_ok=True)
    model = ge.load_model(device="cpu")
    image = str(root / SAMPLE_IMAGE)
    methods = ge.list_methods()
    (dest / "list_methods.json").write_text(json.dumps(methods, indent=1) + "\n", encoding="utf-8")
    for method in methods["image"]:
        explanation = ge.explain_image(model, image, PROMPTS, method=method, **FAST_IMAGE_OPTIONS.get(method, {}))
        _save_image_explanation(dest / f"image_{method}.npz", explanation, scrub)
    with Image.open(image) as picture:
        turned = picture.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    variants = {"official": {"mode": "official"}, "qk_out_proj": {"qk": "out_proj"}, "layers_0_3": {"layers": (0, 3)},
                "resolution_model": {"resolution": "model"}}
    for name, options in variants.items():
        explanation = ge.explain_image(model, image, PROMPTS, method="grad_eclip", **options)
        _save_image_explanation(dest / f"image_grad_eclip_{name}.npz", explanation, scrub)
    explanation = ge.explain_image(model, [image, turned], PROMPTS, method="grad_eclip")
    _save_image_explanation(dest / "image_grad_eclip_two_images.npz", explanation, scrub)
    for method in methods["text"]:
        explanation = ge.explain_text(model, image, CAPTIONS, method=method, **FAST_TEXT_OPTIONS.get(method, {}))
        _save_text_explanation(dest / f"text_{method}.npz", explanation, scrub)
    np.savez_compressed(dest / "encode_texts.npz", embeddings=ge.encode_texts(model, PROMPTS + CAPTIONS).numpy())


# ----------------------------------------------------------------------------------------------- making


def _check_package(root: Path) -> None:
    """Stop unless this process and its subprocesses import the package of ``root``."""
    import gradeclip_utils

    here = Path(gradeclip_utils.__file__).resolve()
    probe = subprocess.run([sys.executable, "-c", "import gradeclip_utils; print(gradeclip_utils.__file__)"],
                           env=_environment(root), capture_output=True, text=True, cwd=tempfile.gettempdir())
    there = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
    for where, found in (("this process", here), ("a subprocess", there)):
        if found is None or root not in found.parents:
            raise SystemExit(f"{where} imports gradeclip_utils from {found}, not from {root}: run from the "
                             f"repository root with PYTHONPATH=$PWD ({probe.stderr[-2000:]})")


def _commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the evaluations, the notebook kernels)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def make(out: Path, parts: list[str]) -> int:
    root = Path.cwd().resolve()
    if not (root / "gradeclip_utils" / "__init__.py").is_file():
        raise SystemExit(f"{root} is not a repository root (no gradeclip_utils/): run from the checkout to fingerprint")
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = str(root)  # the notebook kernels inherit this environment
    _check_package(root)
    seed_everything()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as folder:
        scratch = Path(folder)
        for part in parts:
            dest = out / part
            shutil.rmtree(dest, ignore_errors=True)
            print(f"{part} ...", file=sys.stderr, flush=True)
            start, cpu = time.perf_counter(), _cpu_seconds()
            if part == "eval_small":
                run_evaluation(root, dest, scratch / part, EVAL_SMALL)
            elif part == "published":
                run_evaluation(root, dest, scratch / part, PUBLISHED)
            elif part == "notebooks":
                problems += run_notebooks(root, dest, scratch / part)
            elif part == "api":
                run_api(root, dest)
            seconds[part] = round(time.perf_counter() - start, 1)
            cpu_seconds[part] = round(_cpu_seconds() - cpu, 1)
            print(f"{part}: {seconds[part]:.1f} s ({cpu_seconds[part]:.1f} s CPU)", file=sys.stderr, flush=True)
    run = {"root": str(root), "commit": _commit(root), "parts": parts, "seconds": seconds, "cpu_seconds": cpu_seconds,
           "problems": problems,
           "python": sys.executable, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "_run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    print(f"fingerprint of {root} ({run['commit']}) in {out}: "
          + ", ".join(f"{k} {v:.0f} s ({cpu_seconds[k]:.0f} s CPU)" for k, v in seconds.items()))
    for problem in problems:
        print("FAILED", problem, file=sys.stderr)
    return 1 if problems else 0


# ----------------------------------------------------------------------------------------------- comparing


class Result:
    """One file's comparison: the largest difference, where it is, whether every value is bit-equal, and
    the arrays or columns that are not (largest difference and what differs)."""

    def __init__(self) -> None:
        self.diff, self.worst, self.identical = 0.0, "", True
        self.differences: list[tuple[float, str, str]] = []

    def add(self, name: str, diff: float, identical: bool, note: str = "") -> None:
        self.identical &= identical
        if diff > self.diff or (not self.worst and not identical):
            self.diff, self.worst = diff, name
        if not identical:
            self.differences.append((diff, name, note))

    def lines(self, count: int = 5) -> list[str]:
        """The ``count`` largest differences, one line each."""
        ranked = sorted(self.differences, key=lambda item: -item[0])
        shown = [f"{name}: max |diff| {diff:.3g}" + (f"; {note}" if note else "")
                 for diff, name, note in ranked[:count]]
        if len(ranked) > count:
            shown.append(f"... and {len(ranked) - count} more")
        return shown


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| with NaN equal to NaN and equal infinities equal; inf where only one side is NaN."""
    a, b = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    both_nan = np.isnan(a) & np.isnan(b)
    same = (a == b) | both_nan
    if same.all():
        return 0.0
    if (np.isnan(a) | np.isnan(b))[~same].any() or np.isinf(a[~same]).any() or np.isinf(b[~same]).any():
        return math.inf
    return float(np.abs(a[~same] - b[~same]).max())


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at character {i}: {a[max(0, i - 60):i + 60]!r} against {b[max(0, i - 60):i + 60]!r}"


def compare_arrays(name: str, a: np.ndarray, b: np.ndarray, result: Result) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        result.add(name, math.inf, False, f"{a.dtype}{list(a.shape)} against {b.dtype}{list(b.shape)}")
        return
    identical = a.tobytes() == b.tobytes()
    if identical:
        result.add(name, 0.0, True)
    elif a.dtype.kind in "biuf":
        result.add(name, _max_abs(a.astype(np.float64), b.astype(np.float64)), False)
    else:
        result.add(name, math.inf, False, _first_difference(str(a), str(b)))


def compare_npz(base: Path, new: Path, result: Result) -> None:
    with np.load(base, allow_pickle=False) as a, np.load(new, allow_pickle=False) as b:
        for key in sorted(set(a.files) - set(b.files)):
            result.add(key, math.inf, False, "array missing in NEW")
        for key in sorted(set(b.files) - set(a.files)):
            result.add(key, math.inf, False, "array only in NEW")
        for key in sorted(set(a.files) & set(b.files)):
            compare_arrays(key, a[key], b[key], result)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def compare_csv(base: Path, new: Path, result: Result) -> None:
    with open(base, newline="", encoding="utf-8") as fa, open(new, newline="", encoding="utf-8") as fb:
        a, b = list(csv.reader(fa)), list(csv.reader(fb))
    if not a or not b:
        result.add("(empty)", 0.0 if a == b else math.inf, a == b)
        return
    header_a, header_b = a[0], b[0]
    if header_a != header_b:
        result.add("(header)", math.inf, False, f"columns missing {sorted(set(header_a) - set(header_b))}, "
                   f"extra {sorted(set(header_b) - set(header_a))}, or in another order")
    if len(a) != len(b):
        result.add("(rows)", math.inf, False, f"{len(a) - 1} rows against {len(b) - 1}")
        return
    index_b = {name: i for i, name in enumerate(header_b)}
    for i, column in enumerate(header_a):
        if column not in index_b:
            continue
        j = index_b[column]
        values_a = [row[i] if i < len(row) else "" for row in a[1:]]
        values_b = [row[j] if j < len(row) else "" for row in b[1:]]
        if values_a == values_b:
            result.add(column, 0.0, True)
            continue
        numbers_a = [_float(v) for v in values_a]
        numbers_b = [_float(v) for v in values_b]
        if all(x is not None for x in numbers_a + numbers_b):
            result.add(column, _max_abs(np.array(numbers_a), np.array(numbers_b)), False)
        else:
            row = next(r for r, (x, y) in enumerate(zip(values_a, values_b)) if x != y)
            result.add(column, math.inf, False, f"row {row + 1}: {values_a[row]!r} against {values_b[row]!r}")


def compare_text(base: Path, new: Path, result: Result) -> None:
    a, b = base.read_text(encoding="utf-8"), new.read_text(encoding="utf-8")
    if a == b:
        result.add("(text)", 0.0, True)
    elif base.suffix == ".json" and json.loads(a) == json.loads(b):
        result.add("(json, formatted otherwise)", 0.0, False)
    else:
        result.add("(text)", math.inf, False, _first_difference(a, b))


def _files(folder: Path, parts: list[str]) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not relative.parts[0].startswith("_") and relative.parts[0] in parts:
            found.add(relative.as_posix())
    return found


def compare(base: Path, new: Path, parts: list[str], atol: float) -> int:
    for folder in (base, new):
        if not folder.is_dir():
            raise SystemExit(f"no fingerprint folder {folder}")
    a, b = _files(base, parts), _files(new, parts)
    failed, counts = False, {"bit-identical": 0, "within atol": 0, "DIFFERS": 0, "MISSING": 0, "EXTRA": 0}
    width = max((len(f) for f in a | b), default=10)
    print(f"{'file'.ljust(width)}  {'status':13}  {'max |diff|':>10}  worst")
    print("-" * (width + 40))
    worst_overall = (0.0, "")
    for name in sorted(a | b):
        if name not in b:
            status, result = "MISSING", None
        elif name not in a:
            status, result = "EXTRA", None
        else:
            result = Result()
            try:
                if name.endswith(".npz"):
                    compare_npz(base / name, new / name, result)
                elif name.endswith(".csv"):
                    compare_csv(base / name, new / name, result)
                else:
                    compare_text(base / name, new / name, result)
            except Exception as error:  # an unreadable file differs
                result.add("(unreadable)", math.inf, False, f"{type(error).__name__}: {error}")
            status = ("bit-identical" if result.identical else "within atol" if result.diff <= atol else "DIFFERS")
        counts[status] += 1
        failed |= status in ("MISSING", "DIFFERS")
        if result is None:
            print(f"{name.ljust(width)}  {status:13}  {'':>10}")
            continue
        if result.diff >= worst_overall[0] and not result.identical:
            worst_overall = (result.diff, f"{name}: {result.worst}")
        print(f"{name.ljust(width)}  {status:13}  {result.diff:10.3g}  {result.worst if not result.identical else ''}")
        for line in result.lines():
            print(f"{''.ljust(width)}    {line}")
    print()
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + f" (atol {atol:g}; parts: {', '.join(parts)})")
    if worst_overall[1]:
        print(f"largest difference: {worst_overall[0]:.3g} in {worst_overall[1]}")
    if counts["EXTRA"]:
        print("extra files: NEW has outputs that BASE lacks (a new figure, or a BASE made with fewer parts)")
    if not failed and counts["bit-identical"] == sum(counts.values()):
        print("bit-identical: every file of BASE and NEW holds the same values, bit for bit")
    print("RESULT:", "DIFFERENT" if failed else "same (within atol)" if counts["within atol"] else "bit-identical")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="write the fingerprint of the current directory's tree here")
    action.add_argument("--compare", nargs=2, type=Path, metavar=("BASE", "NEW"), help="compare two fingerprints")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts (default: {','.join(PARTS)})")
    parser.add_argument("--atol", type=float, default=1e-9, help="largest absolute difference accepted (default 1e-9)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.compare:
        return compare(args.compare[0], args.compare[1], parts, args.atol)
    return make(args.out, parts)


if __name__ == "__main__":
    sys.exit(main())
