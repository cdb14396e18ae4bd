#!/usr/bin/env bash
# Install what lors_mmdet needs into the current Python environment, and nothing else.
# Idempotent: a second run with everything present finishes in seconds.
#
#   bash tools/install.sh            (PYTHON=python3.11 bash tools/install.sh to pick one)
#
# - torch: an installed torch is kept (install the CUDA build for your cluster first);
#   on a machine without torch, torch==2.13.0 (the CPU wheel used on our CI machines).
# - mmcv 2.1.0 is built with its ops against the installed torch (--no-build-isolation);
#   PIP_FIND_LINKS may point at a prebuilt wheel for exactly that torch. With CUDA,
#   it is always built from source with FORCE_CUDA=1.
# Every step says what it does and how long it took; a long one (the mmcv build) also
# prints a line every minute while it runs, since pip -q itself is silent until done.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }
since() {  # since START -> "1.2 s" or "14 min 05 s"
  awk -v start="$1" -v end="$(now)" 'BEGIN { t = end - start
    if (t < 60) printf "%.1f s", t; else printf "%d min %02d s", t / 60, t % 60 }'
}
step() {  # step WHAT COMMAND...: announce WHAT, run COMMAND, say how long it took
  local what=$1 start heartbeat status=0
  shift
  echo "-- $what"
  start=$(now)
  ( while sleep 60; do echo "   ... still $what ($(since "$start") so far)"; done ) &
  heartbeat=$!
  "$@" || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    echo "   FAILED after $(since "$start"): $what" >&2
    return "$status"
  fi
  echo "   done in $(since "$start")"
}
pip_install() { echo "   + pip install $*"; "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }
have() {  # have DISTRIBUTION VERSION_PREFIX: installed with a version starting so (prints it)
  "$PYTHON" - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata, sys
version = importlib.metadata.version(sys.argv[1])
print(version)
sys.exit(not version.startswith(sys.argv[2]))
PY
}
ensure() {  # ensure DISTRIBUTION VERSION_PREFIX WHAT COMMAND...: keep it if present, else step
  local distribution=$1 prefix=$2 what=$3 start version
  shift 3
  start=$(now)
  if version=$(have "$distribution" "$prefix"); then
    echo "-- $distribution $version present: kept (checked in $(since "$start"))"
  else
    step "$what" "$@"
  fi
}

INSTALL_START=$(now)
echo "== lors_mmdet install into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
ensure torch '' 'installing torch 2.13.0' pip_install torch==2.13.0
setuptools_ok() {
  "$PYTHON" -c 'import setuptools, sys; v = tuple(map(int, setuptools.__version__.split(".")[:2])); sys.exit(not (77, 0) <= v < (81, 0))' 2>/dev/null
}
start=$(now)
if setuptools_ok; then
  echo "-- setuptools $("$PYTHON" -c 'import setuptools; print(setuptools.__version__)') present: kept (>=77,<81; checked in $(since "$start"))"
else  # mmengine / mmcv's setup.py import pkg_resources
  step 'installing setuptools>=77,<81 (mmengine and the mmcv build need pkg_resources)' \
    pip_install 'setuptools>=77,<81'
fi
ensure mmengine 0.10.7 'installing mmengine 0.10.7' pip_install mmengine==0.10.7

MMCV_BUILD_TIME='~15 min on 2 cores'
mmcv_ops_ok() { "$PYTHON" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; }
build_mmcv_from_source() {  # the wheel pip found (PIP_FIND_LINKS) was built for another torch
  MMCV_WITH_OPS=1 pip_install --no-build-isolation --no-binary mmcv --force-reinstall --no-deps mmcv==2.1.0
}
install_mmcv_cpu() {
  MMCV_WITH_OPS=1 pip_install --no-build-isolation mmcv==2.1.0
  if ! mmcv_ops_ok; then
    step "the mmcv wheel found does not load against this torch: building mmcv 2.1.0 from source ($MMCV_BUILD_TIME)" \
      build_mmcv_from_source
  fi
}
install_mmcv_cuda() {
  FORCE_CUDA=1 MMCV_WITH_OPS=1 pip_install --no-build-isolation --no-binary mmcv mmcv==2.1.0
}
# An installed mmcv 2.1.0 is checked by the final import (which names the fix).
start=$(now)
if version=$(have mmcv 2.1.0); then
  echo "-- mmcv $version present: kept (checked in $(since "$start"))"
elif "$PYTHON" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  step 'building mmcv 2.1.0 with CUDA ops from source (longer than the CPU build)' install_mmcv_cuda
elif [ -n "${PIP_FIND_LINKS:-}" ]; then
  step "installing mmcv 2.1.0 with CPU ops: a prebuilt wheel from PIP_FIND_LINKS=$PIP_FIND_LINKS if one fits (seconds), else built from source ($MMCV_BUILD_TIME)" \
    install_mmcv_cpu
else
  step "building mmcv 2.1.0 with CPU ops from source ($MMCV_BUILD_TIME)" install_mmcv_cpu
fi
ensure mmdet 3.3.0 'installing mmdet 3.3.0' pip_install mmdet==3.3.0
for package in pycocotools tqdm matplotlib Pillow pytest; do
  ensure "$package" '' "installing $package" pip_install "$package"
done
# Test-time only (tests/test_lors_gpt2.py: the surgery on a real GPT-2; skipped without it).
# Pure Python plus small wheels, no torch: about 25 s.
ensure transformers '' 'installing transformers (for the GPT-2 surgery test)' \
  pip_install transformers

# Checked from outside the repository: there, the current directory would hide a missing install.
repo=$(pwd -P)
start=$(now)
found=$(cd / && "$PYTHON" -c 'import importlib.util as u, os; s = u.find_spec("lors_mmdet"); print(os.path.dirname(os.path.dirname(s.origin)) if s else "")' 2>/dev/null || true)
if [ "$found" = "$repo" ]; then
  echo "-- lors_mmdet present: imported from this checkout (checked in $(since "$start"))"
else
  step "installing lors_mmdet from $repo (pip install -e .; ${found:+now imported from $found}${found:-not installed})" \
    pip_install --no-build-isolation --no-deps -e .
fi

check_imports() {
  "$PYTHON" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, torch
import lors_mmdet
print(f'   OK: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), '
      f'mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops load), '
      f'mmdet {mmdet.__version__}, lors_mmdet {lors_mmdet.__version__}')
PY
}
step 'checking that everything imports (torch, mmcv ops, mmdet, lors_mmdet)' check_imports
echo "== install finished in $(since "$INSTALL_START")"
