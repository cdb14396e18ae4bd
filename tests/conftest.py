"""Shared pytest fixtures of the project."""
import json
import os
import os.path as osp
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='session')
def synthetic_coco_factory(tmp_path_factory) -> Callable[..., str]:
    """Factory ``make(num_train=64, num_val=16, img_size=128, seed=0,
    max_objects=6) -> data root`` for synthetic COCO sets (see
    ``lors_mmdet.datasets.synthetic``), each generated once per session per
    set of arguments. The root holds ``train/``, ``val/`` and
    ``annotations/instances_{train,val}.json``; use it as ``data_root`` (it
    ends with a '/' so that ``data_root + 'annotations/...'`` works too).
    Treat the files as read-only: other tests share them.
    """
    from lors_mmdet.datasets.synthetic import generate_synthetic_coco

    made: Dict[Tuple, str] = {}

    def make(num_train: int = 64,
             num_val: int = 16,
             img_size: int = 128,
             seed: int = 0,
             max_objects: int = 6) -> str:
        key = (num_train, num_val, img_size, seed, max_objects)
        if key not in made:
            root = tmp_path_factory.mktemp('synthetic_coco')
            generate_synthetic_coco(str(root),
                                    num_train=num_train,
                                    num_val=num_val,
                                    img_size=img_size,
                                    seed=seed,
                                    max_objects=max_objects)
            made[key] = str(root) + '/'
        return made[key]

    return make


@pytest.fixture(scope='session')
def synthetic_coco(synthetic_coco_factory) -> str:
    """Data root of a small synthetic COCO set: 64 train and 16 val images
    of 128x128 px, seed 0 (generated once per session)."""
    return synthetic_coco_factory()


@pytest.fixture(scope='session')
def write_run() -> Callable[..., None]:
    """Function ``write(run, name, maps, finished=None, every=100)`` that
    writes the run dir ``run`` as mmengine and ``run_experiments.py`` leave it:
    ``<run>/20261130_000000/vis_data/scalars.json`` with, for the i-th value
    of ``maps`` (i from 1), the training loss ``10 / i`` at iteration
    ``every * i`` and then its validation (step 0, as mmengine logs an
    iteration-based one): bbox_mAP = value, bbox_mAP_50 = value + 0.2 and
    bbox_mAP_75 = value + 0.1; and ``<run>/finished.json`` holding ``name``,
    90 seconds of training and the items of ``finished``.
    """

    def write(run: Path,
              name: str,
              maps: Sequence[float],
              finished: Optional[dict] = None,
              every: int = 100) -> None:
        scalars = run / '20261130_000000' / 'vis_data'
        scalars.mkdir(parents=True)
        records = []
        for i, value in enumerate(maps, start=1):
            records.append(dict(iter=every * i, loss=10.0 / i))
            records.append({
                'coco/bbox_mAP': value,
                'coco/bbox_mAP_50': value + 0.2,
                'coco/bbox_mAP_75': value + 0.1,
                'step': 0
            })
        (scalars / 'scalars.json').write_text(
            '\n'.join(json.dumps(r) for r in records) + '\n')
        (run / 'finished.json').write_text(
            json.dumps(dict(name=name, seconds=90.0, **(finished or {}))))

    return write


@pytest.fixture(scope='session')
def finished_run(write_run) -> Callable[..., Path]:
    """Function ``make(work_dir, plan, name, seed, maps, commit='a' * 40,
    every=100) -> run dir`` that writes the finished run of ``name`` in plan
    ``plan`` (``tools.analysis.run_experiments.PLANS``) with seed ``seed``, as
    ``run_experiments.py`` leaves it: ``work_dir/<name, spaces as
    _>/seed<seed>``, its scalars as ``write_run`` writes them and its
    ``finished.json`` holding the run's config and options, ``seed`` and
    ``commit`` too.
    """

    def make(work_dir: Path,
             plan: str,
             name: str,
             seed: int,
             maps: Sequence[float],
             commit: str = 'a' * 40,
             every: int = 100) -> Path:
        from tools.analysis.run_experiments import PLANS
        config, options = PLANS[plan][name]
        run = work_dir / name.replace(' ', '_') / f'seed{seed}'
        finished = dict(config=config,
                        options=options,
                        seed=seed,
                        commit=commit)
        write_run(run, name, maps, finished, every=every)
        return run

    return make


@pytest.fixture(scope='session')
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    """Function ``run(tool, *args, cwd=ROOT)`` that runs
    ``tools/analysis/<tool>.py`` with ``args`` in a subprocess (the checkout
    first on PYTHONPATH, at most 300 s) and returns the finished process, its
    stdout and stderr captured as text; it does not raise on failure.
    """

    def run(tool: str,
            *args: str,
            cwd: str = ROOT) -> subprocess.CompletedProcess:
        path = os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])
        script = osp.join(ROOT, 'tools', 'analysis', f'{tool}.py')
        return subprocess.run([sys.executable, script, *args],
                              cwd=cwd,
                              env=dict(os.environ, PYTHONPATH=path),
                              capture_output=True,
                              text=True,
                              timeout=300)

    return run


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` run only where torch sees a CUDA device."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs CUDA (marker "cuda")')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
