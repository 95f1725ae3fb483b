#!/usr/bin/env bash
# Create (once) and update (when the requirements change) the project's virtual environment.
# Idempotent: a second run with nothing changed installs nothing.
#   GRADECLIP_VENV  venv folder (default .venv)
#   PYTHON          interpreter to create it with (default python3.11, else python3)
#   TORCH_SPEC      how to install PyTorch (default "torch==2.14.1 torchvision==0.29.1")
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${GRADECLIP_VENV:-.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating virtual environment $venv with $python"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
stamp="$venv/.gradeclip-setup"
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $torch_spec"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$venv/bin/python" -c "import gradeclip_utils" 2>/dev/null; then
    exit 0
fi
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing PyTorch ($torch_spec)"
    # shellcheck disable=SC2086
    "${pip[@]}" install $torch_spec
fi
echo "setup: installing gradeclip_utils with its test and notebook extras"
"${pip[@]}" install -e ".[dev]"
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
# JupyterLab in this environment saves the widgets' state with a notebook (a reopened notebook shows the
# explorers' last figures, not "Error displaying widget"); a user's own setting still wins
"$venv/bin/python" -m gradeclip_utils.notebooks --install-lab-settings >/dev/null
echo "$wanted" > "$stamp"
