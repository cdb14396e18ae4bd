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
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
pip_install() { echo "+ pip install $*"; "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }
have() {  # have DISTRIBUTION VERSION_PREFIX -> installed with a version starting so
  "$PYTHON" - "$1" "$2" <<'PY' 2>/dev/null
import importlib.metadata, sys
sys.exit(not importlib.metadata.version(sys.argv[1]).startswith(sys.argv[2]))
PY
}

echo "== lors_mmdet install into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
if have torch ''; then
  echo "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') present: kept"
else
  pip_install torch==2.13.0
fi
if ! "$PYTHON" -c 'import setuptools, sys; v = tuple(map(int, setuptools.__version__.split(".")[:2])); sys.exit(not (77, 0) <= v < (81, 0))' 2>/dev/null; then
  pip_install 'setuptools>=77,<81'   # mmengine / mmcv's setup.py import pkg_resources
fi
have mmengine 0.10.7 || pip_install mmengine==0.10.7

mmcv_ops_ok() { "$PYTHON" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; }
# An installed mmcv 2.1.0 is checked by the final import (which names the fix).
if ! have mmcv 2.1.0; then
  if "$PYTHON" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
    echo "CUDA torch: building mmcv 2.1.0 with CUDA ops from source (takes a while)"
    FORCE_CUDA=1 MMCV_WITH_OPS=1 pip_install --no-build-isolation --no-binary mmcv mmcv==2.1.0
  else
    echo "building/installing mmcv 2.1.0 with CPU ops${PIP_FIND_LINKS:+ (PIP_FIND_LINKS=$PIP_FIND_LINKS)}"
    MMCV_WITH_OPS=1 pip_install --no-build-isolation mmcv==2.1.0
    if ! mmcv_ops_ok; then
      echo "the mmcv wheel found does not load against this torch: rebuilding from source"
      MMCV_WITH_OPS=1 pip_install --no-build-isolation --no-binary mmcv --force-reinstall --no-deps mmcv==2.1.0
    fi
  fi
fi
have mmdet 3.3.0 || pip_install mmdet==3.3.0
for package in pycocotools tqdm matplotlib Pillow pytest; do
  have "$package" '' || pip_install "$package"
done
# Checked from outside the repository: there, the current directory would hide a missing install.
repo=$(pwd -P)
if ! (cd / && "$PYTHON" -c 'import importlib.util as u, os, sys; s = u.find_spec("lors_mmdet"); sys.exit(s is None or os.path.dirname(os.path.dirname(s.origin)) != sys.argv[1])' "$repo") 2>/dev/null; then
  pip_install --no-build-isolation --no-deps -e .
fi

"$PYTHON" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, torch
import lors_mmdet
print(f'OK: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), '
      f'mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops load), '
      f'mmdet {mmdet.__version__}, lors_mmdet {lors_mmdet.__version__}')
PY
