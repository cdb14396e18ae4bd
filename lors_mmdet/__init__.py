"""lors_mmdet: LORS (Low-rank Residual Structure) for MMDetection 3.x.

``import lors_mmdet`` (or ``custom_imports=dict(imports=['lors_mmdet'])`` in a
config) applies the compatibility fixes of :mod:`lors_mmdet.compat` and registers
the plugin's modules in mmdet's registries.

The method itself, :mod:`lors_mmdet.lors`, depends on PyTorch only; it stays
importable on a machine without the OpenMMLab stack.
"""
import importlib.util

from .version import __version__

if importlib.util.find_spec('mmdet') is not None:
    # The OpenMMLab stack is installed: fix it up and register our modules.
    # Import errors here are real problems and must surface.
    from . import compat  # noqa: F401  (must run before mmengine loads anything)
    from . import engine, models  # noqa: F401

__all__ = ['__version__']
