"""tools/install.sh on an environment that has everything: every step says what it
found and how long the check took, nothing is installed, and it is quick."""
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGES = ['torch', 'setuptools', 'mmengine', 'mmcv', 'mmdet', 'pycocotools', 'tqdm',
            'matplotlib', 'Pillow', 'pytest', 'transformers']


def test_second_run_installs_nothing_and_times_every_step(tmp_path):
    # PYTHONPATH=ROOT: lors_mmdet is found in this checkout, so the script keeps the
    # environment's editable install (a developer's worktree must not re-point it);
    # without an index, any attempt to install would fail instead of installing.
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=ROOT, PIP_NO_INDEX='1',
               PIP_FIND_LINKS=str(tmp_path))
    start = time.perf_counter()
    result = subprocess.run(['bash', 'tools/install.sh'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert 'pip install' not in out and 'installing' not in out, out
    for package in PACKAGES:
        assert re.search(rf'^-- {package} \S+ present: kept \(.*checked in [\d.]+ s\)$',
                         out, re.M), (package, out)
    assert re.search(r'^-- lors_mmdet present: imported from this checkout '
                     r'\(checked in [\d.]+ s\)$', out, re.M), out
    assert re.search(r'^   OK: torch .* lors_mmdet', out, re.M), out
    total = re.search(r'^== install finished in ([\d.]+) s$', out, re.M)
    assert total, out
    # the script's own clock agrees with ours (it times what it does)
    assert float(total.group(1)) <= elapsed + 0.5
