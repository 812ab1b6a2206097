#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): one markdown report on stdout, within 8 minutes on one GPU; exits 0 with a
# note when no GPU is visible. Usage: bash scripts/gpu_check.sh > gpu_check.md   (extra arguments are passed on)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/gpu_check.py "$@"
