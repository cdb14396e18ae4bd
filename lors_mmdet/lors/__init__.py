"""LORS, the method: pure PyTorch, no OpenMMLab import.

Static branch (:mod:`.static`): a stack of linear maps sharing one weight, each
layer adding a private low-rank residual. See ``docs/lors_library.md``.
"""
from .static import (LorsLinear, LorsLinearStack, SharedLinear,
                     build_lors_linears)

__all__ = ['SharedLinear', 'LorsLinear', 'LorsLinearStack',
           'build_lors_linears']
