"""What the package writes down about its results: their provenance (the model, its weights, the software),
the output folder of a resumable run (``RunFolder``: its settings file, what ``overwrite`` removes,
and ``run.json``), and whether an output location can be written at all (``writable_output``, checked by the
command line before any work).

Each file keeps its own format and takes from ``provenance()`` the keys it records: the evaluation's
``config.json`` and the dataset explanation's ``index.json`` the model and its weights digest, the figure
manifests the model and the software (package version, git commit, versions of the main dependencies).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from .jobs.files import atomic_write_text
from .errors import GradEclipError
from .resources import REPO_ROOT

#: the distributions whose versions a figure manifest records
VERSIONED = ("gradeclip_utils", "torch", "open_clip_torch", "numpy", "matplotlib")


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, dtypes, shapes and values): results and
    caches made with other weights under the same model name must not be reused."""
    h = hashlib.blake2b(digest_size=8)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Python's version and the installed versions of ``VERSIONED``."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for distribution in VERSIONED:
        try:
            found[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[distribution] = "not installed"
    return found


def git_commit() -> str | None:
    """The repository's commit (with ``+dirty`` when files differ from it), or None outside a checkout."""
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_version() -> str:
    from . import __version__

    return __version__


def provenance(model: Any = None, *, weights: bool = False, software: bool = False) -> dict[str, Any]:
    """What a result was made with, as the files that record it spell it.

    ``model`` (a LoadedModel): ``"model"``, its ``describe()`` (name, family, weights tag, precision,
    device); with ``weights`` also ``"weights"``, the digest of its parameters (``weights_digest``).
    ``software``: ``"package"`` (name, version and git commit of this package) and ``"versions"`` (Python
    and the main dependencies).
    """
    record: dict[str, Any] = {}
    if model is not None:
        record["model"] = model.describe()
        if weights:
            record["weights"] = weights_digest(model.model)
    if software:
        record["package"] = {"name": "gradeclip_utils", "version": package_version(), "git_commit": git_commit()}
        record["versions"] = versions()
    return record


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' settings agree, leaving out what may change between a run and its resumption:
    the ``distributed`` record and the device index (``cuda:1`` on rank 1 is ``cuda`` in one process)."""

    def plain(settings: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in settings.items() if k != "distributed"}
        model = settings.get("model")
        if isinstance(model, dict) and isinstance(model.get("device"), str):
            settings["model"] = {**model, "device": model["device"].split(":")[0]}
        return settings

    return plain(a) == plain(b)


class RunFolder:
    """The output folder of a run that resumes where it stopped.

    ``record``: the file (in the folder) that holds the run's settings; ``outputs`` and ``folders``: what
    ``clear`` removes when a run starts afresh (``overwrite``); ``what``: the run's results in the error
    that refuses other settings ("a run", "maps made").
    """

    def __init__(self, path: str | Path, record: str, *, outputs: Sequence[str] = (), folders: Sequence[str] = (),
                 what: str = "a run") -> None:
        self.path = Path(path)
        self.record = self.path / record
        self.outputs = tuple(outputs)
        self.folders = tuple(folders)
        self.what = what

    def previous(self, overwrite: bool = False) -> dict[str, Any] | None:
        """The record of the run already in the folder, or None (none there, or ``overwrite``)."""
        return json.loads(self.record.read_text()) if self.record.exists() and not overwrite else None

    @staticmethod
    def matches(previous: dict[str, Any], settings: dict[str, Any]) -> bool:
        """Whether a run with ``previous`` settings is resumed by one with ``settings`` (the distribution
        and the device index may differ: ``same_settings``)."""
        return same_settings(previous, settings)

    def check(self, previous: dict[str, Any], settings: dict[str, Any]) -> None:
        """Refuse to resume a run made with other settings."""
        if not self.matches(previous, settings):
            raise ValueError(f"{self.path} holds {self.what} with other settings ({self.record}); use another --out "
                             "or --overwrite to start afresh")

    def clear(self) -> None:
        """Remove what an earlier run wrote (``outputs`` and ``folders``)."""
        for name in self.outputs:
            (self.path / name).unlink(missing_ok=True)
        for name in self.folders:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def write_run(self, *, world_size: int, device: Any, unit: str, count: int,
                  phases: Sequence[dict[str, float]]) -> None:
        """``run.json``: the run's throughput from every rank's phase (``computed`` results, wall and CPU
        ``seconds``): ``count`` results in all (``unit``: "results", "images"), computed or already done."""
        seconds, total = max(p["seconds"] for p in phases), sum(p["computed"] for p in phases)
        run = {"world_size": world_size, "device": str(device), unit: count, "computed": total,
               "already_done": count - total, "seconds": round(seconds, 3),
               "cpu_seconds": round(sum(p["cpu_seconds"] for p in phases), 3),
               f"{unit}_per_second": round(rate(total, seconds), 3)}
        atomic_write_text(self.path / "run.json", json.dumps(run, indent=2) + "\n")


def rate(count: float, seconds: float) -> float:
    """``count`` per second (NaN for no time)."""
    return count / seconds if seconds > 0 else math.nan


class OutputNotWritableError(GradEclipError, PermissionError):
    """An output file or folder that cannot be written (a PermissionError, as the write would have raised)."""


def writable_output(path: str | Path, *, folder: bool) -> Path:
    """Check that ``path``, an output folder (``folder``) or file, can be written, before any work and without
    writing anything: the nearest folder of it that exists (the output folder, the file's folder, or the one
    the missing folders would be made in) must let a file be made in it. Raises ``OutputNotWritableError``
    ("cannot write to PATH (permission denied)") where a part of the path is a file, or where no file can be
    made; that is tried for real with a temporary file, as root passes ``os.access`` on read-only file systems
    and immutable folders. Missing folders are left for the command to make."""
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        raise OutputNotWritableError(f"cannot write to {path}: it is a folder (name a file in it)")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputNotWritableError(f"cannot write to {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (not folder and path.exists() and not os.access(path, os.W_OK)):
        raise OutputNotWritableError(f"cannot write to {path} (permission denied)")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OutputNotWritableError(f"cannot write to {path} ({_reason(error)})") from error
    return path


def _reason(error: OSError) -> str:
    """An OSError's cause in lower case ("permission denied", "read-only file system")."""
    text = error.strerror or type(error).__name__
    return text[:1].lower() + text[1:]
