"""Loads lors_mmdet/gpu_kit.py by path for the kit's tools.

Importing the lors_mmdet package would need mmcv, which the kit installs.
"""
import importlib.util
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_gpu_kit():
    spec = importlib.util.spec_from_file_location(
        'gpu_kit', osp.join(REPO, 'lors_mmdet', 'gpu_kit.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
