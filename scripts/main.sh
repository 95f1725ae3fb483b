#!/usr/bin/env bash
# The main job (sets up the environment first): execute every notebook headless on the embedded synthetic
# CLIP, with progress shown (per notebook, per cell, and the running cell's own progress line); executed copies
# go to OUT/notebooks, figures (PNG, PDF and a JSON manifest each) to OUT/figures/<notebook>, a summary to
# OUT/summary.json. The default sizes take a few minutes on two CPU cores; --full runs the full study sizes.
#   bash scripts/main.sh [OUT] [runner options]     (OUT defaults to outputs/)
# Runner options (python -m gradeclip_utils.notebooks --help): --full, --quick, --only 01 03,
# --model ViT-B-16 --pretrained openai, --param NAME=VALUE, --fail-fast.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="outputs"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out="$1"
    shift
fi
mkdir -p "$out"
unset MPLBACKEND  # the notebooks' kernels draw inline
exec "${GRADECLIP_VENV:-.venv}/bin/python" -m gradeclip_utils.notebooks --out "$out" "$@"
