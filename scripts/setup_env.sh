#!/usr/bin/env bash
# Creates the project's virtual environment with the training stack: the pinned torch/torchvision (from the
# machine's local wheel cache with pip), timm, Hydra, submitit, wandb, pycocotools, then this project in editable
# mode. The detection stack (mmcv built from source, mmdet) is separate: scripts/setup_mmdet.sh (make setup-detection).
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade "pip<26"
"$venv/bin/python" -m pip install -q -r requirements.txt
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
