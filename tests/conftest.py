"""Shared pytest fixtures of the project."""
from typing import Callable, Dict, Tuple

import pytest


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


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` run only where torch sees a CUDA device."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs CUDA (marker "cuda")')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
