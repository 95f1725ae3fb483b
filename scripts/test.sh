#!/usr/bin/env bash
# Run the test suite (sets up the environment first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
# OpenMP threads that sleep instead of spinning: several times faster when the cores are shared
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "${GRADECLIP_VENV:-.venv}/bin/python" -m pytest "$@"
