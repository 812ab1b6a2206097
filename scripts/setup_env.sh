#!/usr/bin/env bash
# Creates the project's virtual environment: the pinned stack, then this project in editable mode.
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
bash scripts/setup_mmdet.sh "$venv"  # detection stack: mmcv 2.1.0 built once per machine, then mmengine + mmdet 3.3.0
