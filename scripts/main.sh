#!/usr/bin/env bash
# The main job (sets up the environment first): explain the bundled sample scene with the embedded
# synthetic CLIP and write the figures to OUT (default outputs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-outputs}"
mkdir -p "$out"
export MPLBACKEND=Agg
exec "${GRADECLIP_VENV:-.venv}/bin/gradeclip" explain data/samples/three_shapes.png \
    "a red circle" "a blue square" "a yellow star" --out "$out/three_shapes.png"
