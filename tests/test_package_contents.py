"""What ``pip install`` ships: the plugin only, none of the repository's upkeep."""
import os.path as osp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Repository upkeep (tools/upkeep/): it must not come back into the package.
UPKEEP_MODULES = ('gpu_kit.py', 'model_index.py', 'docs_tables.py')


def test_setup_ships_the_plugin_package_only(tmp_path):
    """setuptools' own build step (build_py) copies exactly lors_mmdet's sources."""
    result = subprocess.run(
        [sys.executable, 'setup.py', '-q', 'build_py', '--build-lib', str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lors_mmdet']
    shipped = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*.py'))
    in_checkout = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'lors_mmdet').rglob('*.py'))
    assert shipped == in_checkout
    upkeep = [path for path in shipped if osp.basename(path) in UPKEEP_MODULES]
    assert not upkeep, f'repository upkeep in the installed package: {upkeep}'
