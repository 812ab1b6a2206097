#!/usr/bin/env bash
# Installs the detection stack (mmcv 2.1.0 with compiled ops, mmengine, mmdet 3.3.0) into the project's venv.
#
# No mmcv wheel exists for our torch, so mmcv is built from its PyPI source distribution once per machine and the
# wheel is cached outside the repository (ODCONV_WHEEL_CACHE, default ~/.cache/odconv/wheels); later set-ups reuse it.
# Three things the stock sdist needs on current torch:
#   - torch's headers need C++20, mmcv's setup.py asks for -std=c++14/17: the flags are raised with sed;
#   - setup.py imports pkg_resources (gone from setuptools >= 80 and torch wants >= 77): an old setuptools is put on
#     PYTHONPATH for the build only, so the venv's own setuptools is never downgraded;
#   - setup.py imports torch: the build runs with --no-build-isolation.
# The build compiles the CPU ops (about 12 min on 2 cores); on a machine where torch sees a GPU (or FORCE_CUDA=1)
# mmcv also compiles its CUDA ops, which takes much longer.
# Usage: scripts/setup_mmdet.sh [venv]      (idempotent: does nothing when the stack already imports)
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py="$venv/bin/python"
mmcv_version=2.1.0
mmdet_version=3.3.0
mmengine_version=0.10.7

if "$py" - <<EOF 2>/dev/null
import importlib.metadata as md, mmcv.ops, mmdet, mmengine
assert md.version("mmcv") == "$mmcv_version" and md.version("mmdet") == "$mmdet_version"
EOF
then
  echo "setup_mmdet: mmcv $mmcv_version (with ops) and mmdet $mmdet_version already installed"
  exit 0
fi

# The wheel is only valid for the torch and python it was compiled against, so they name its cache folder.
tag=$("$py" -c "import sys, torch; print(f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')")
cache="${ODCONV_WHEEL_CACHE:-$HOME/.cache/odconv/wheels}/$tag"
mkdir -p "$cache"

# Keep what is installed now: pip must not replace torch or numpy while resolving mmcv/mmdet's requirements.
constraints=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$work" "$constraints"' EXIT
"$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision|numpy|setuptools)==' > "$constraints"

wheel=$(ls "$cache"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "setup_mmdet: building mmcv $mmcv_version with ops for $tag (about 12 minutes on 2 cores)"
  start=$(date +%s)
  "$py" -m pip install -q --no-deps --target "$work/buildtools" "setuptools<70" "wheel<0.46"
  buildpath="$work/buildtools${PYTHONPATH:+:$PYTHONPATH}"
  PYTHONPATH="$buildpath" "$py" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    "mmcv==$mmcv_version" -d "$work"
  tar -xzf "$work/mmcv-$mmcv_version.tar.gz" -C "$work"
  sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work/mmcv-$mmcv_version/setup.py"
  PYTHONPATH="$buildpath" MMCV_WITH_OPS=1 "$py" -m pip wheel -q --no-build-isolation --no-deps "$work/mmcv-$mmcv_version" -w "$work/dist"
  built=$(ls "$work"/dist/mmcv-*.whl)
  # Copy then rename, so a crash never leaves a half-written wheel in the cache.
  cp "$built" "$cache/.partial.whl" && mv "$cache/.partial.whl" "$cache/$(basename "$built")"
  wheel="$cache/$(basename "$built")"
  echo "setup_mmdet: built $(basename "$wheel") in $(( $(date +%s) - start )) s, cached in $cache"
fi

"$py" -m pip install -q -c "$constraints" "$wheel" "mmengine==$mmengine_version" "mmdet==$mmdet_version"
"$py" -c "import mmcv.ops, mmdet; print('setup_mmdet: mmcv', mmcv.__version__, 'with ops, mmdet', mmdet.__version__)"
