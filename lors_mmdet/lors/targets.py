"""The dense modules a static LORS map can stand in for.

- ``nn.Linear`` (and its subclasses): ``y = x W^T + b``, ``W`` stored
  (out_features, in_features).
- transposed linears: Hugging Face ``transformers``' ``Conv1D`` (GPT-2,
  GPT, ...), ``y = x W + b`` with ``W`` stored (in, out) as ``(nx, nf)``.
  Recognised by duck typing (a class named ``Conv1D`` in the module's type
  hierarchy, ``nf`` / ``nx`` attributes, a weight of shape ``(nx, nf)``), so
  that this package needs no ``transformers`` import.

Everything here reads a module as ``(in_features, out_features, bias)`` and
a weight in ``nn.Linear``'s layout, and builds the module back.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

TRANSPOSED_LINEAR = 'Conv1D'


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` looks like ``transformers``' ``Conv1D``.

    Args:
        module: any module.
    """
    if not any(cls.__name__ == TRANSPOSED_LINEAR
               for cls in type(module).__mro__):
        return False
    nf, nx = getattr(module, 'nf', None), getattr(module, 'nx', None)
    weight = getattr(module, 'weight', None)
    bias = getattr(module, 'bias', None)
    return (isinstance(nf, int) and isinstance(nx, int)
            and isinstance(weight, Tensor) and weight.shape == (nx, nf)
            and (bias is None
                 or isinstance(bias, Tensor) and bias.shape == (nf, )))


def linear_spec(module: nn.Module) -> Optional[Tuple[int, int, bool]]:
    """``(in_features, out_features, bias)`` of a module a LORS map can
    replace, None for any other module.

    Args:
        module: any module.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None
    if is_transposed_linear(module):
        return module.nx, module.nf, module.bias is not None
    return None


def linear_weight(module: nn.Module) -> Tensor:
    """The weight of ``module`` as (out_features, in_features), a view.

    Args:
        module: an ``nn.Linear`` or a transposed linear.
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if is_transposed_linear(module):
        return module.weight.t()
    raise TypeError(f'{type(module).__name__} is neither an nn.Linear nor a '
                    f'transposed linear ({TRANSPOSED_LINEAR})')


@torch.no_grad()
def build_linear(cls: type, weight: Tensor,
                 bias: Optional[Tensor]) -> nn.Module:
    """A new ``cls`` module computing ``x weight^T + bias``.

    Args:
        cls: an ``nn.Linear`` subclass or a transposed linear class (built as
            ``cls(nf, nx)``, ``transformers``' signature).
        weight: (out_features, in_features).
        bias: (out_features,) or None.
    """
    out_features, in_features = weight.shape
    factory = dict(device=weight.device, dtype=weight.dtype)
    if issubclass(cls, nn.Linear):
        module = cls(in_features, out_features, bias=bias is not None,
                     **factory)
        module.weight.copy_(weight)
    else:
        module = cls(out_features, in_features).to(**factory)
        module.weight.copy_(weight.t())
        if bias is None:
            module.register_parameter('bias', None)
    if bias is not None:
        module.bias.copy_(bias)
    return module
