"""Starting this checkout's commands under torchrun, for the tests (gloo on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def torchrun(*args: str, cwd: Path, extra_env: dict[str, str] | None = None, nproc: int = 2,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC ARGS...`` (a free port of its own), one thread per
    process, this checkout first on the path; returns the finished process with its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", **(extra_env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
