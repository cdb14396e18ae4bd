"""Walking a module tree: parameter accounting and re-initialisation."""
from typing import Dict, NamedTuple

from torch import Tensor, nn

from .adaptive import LorsAdaptive, SharedGenerator
from .static import LorsLinear, SharedLinear

SHARED_TYPES = (SharedLinear, SharedGenerator)
LORS_LAYER_TYPES = (LorsLinear, LorsAdaptive)


class ParameterCount(NamedTuple):
    """Parameter counts of a module tree.

    Attributes:
        shared: elements of the shared LORS tensors (registered once).
        private: every other element.
        total: ``shared + private``.
        stock_equivalent: what the same network with N independent stock
            layers would hold: each shared tensor ``num_layers`` times, without
            the LORS-only factors (``lors_A``/``lors_B``, core generators,
            ``lors_L``/``lors_R``).
    """
    shared: int
    private: int
    total: int
    stock_equivalent: int

    @property
    def saving(self) -> float:
        """Fraction of ``stock_equivalent`` that LORS does not need."""
        if self.stock_equivalent == 0:
            return 0.0
        return 1.0 - self.total / self.stock_equivalent


def count_parameters(module: nn.Module) -> ParameterCount:
    """Count the parameters of ``module``, each tensor once.

    Shared modules referenced by LORS layers of the tree are counted even when
    they are registered outside it (so a single layer reports what it uses).

    Args:
        module: any module tree.
    """
    shared_modules: Dict[int, nn.Module] = {}
    for sub in module.modules():
        if isinstance(sub, SHARED_TYPES):
            shared_modules[id(sub)] = sub
        elif isinstance(sub, LORS_LAYER_TYPES):
            shared_modules[id(sub.shared)] = sub.shared
    seen = set()

    def numel_once(tensor: Tensor) -> int:
        if id(tensor) in seen:
            return 0
        seen.add(id(tensor))
        return tensor.numel()

    shared = stock = 0
    for shared_module in shared_modules.values():
        count = sum(numel_once(p) for p in shared_module.parameters())
        shared += count
        stock += count * shared_module.num_layers
    lors_only = set()
    for sub in module.modules():
        if isinstance(sub, LorsLinear):
            lors_only.update({id(sub.lors_A), id(sub.lors_B)})
        elif isinstance(sub, LorsAdaptive):
            lors_only.update(id(p) for p in sub.parameters())
    private = 0
    for param in module.parameters():
        count = numel_once(param)
        private += count
        if id(param) not in lors_only:
            stock += count
    return ParameterCount(shared, private, shared + private, stock)


def reset_lors_parameters(module: nn.Module) -> None:
    """Re-initialise the private parts of every LORS layer in ``module``.

    Calls ``reset_parameters()`` of every :class:`LorsLinear` and
    :class:`LorsAdaptive` (zero B / zero core generators, fresh A / L / R) so
    that each layer equals the shared one again. Use it after a framework's
    ``init_weights`` (e.g. mmdet's xavier init of DETR decoders). Shared
    modules are left alone.
    """
    for sub in module.modules():
        if isinstance(sub, LORS_LAYER_TYPES):
            sub.reset_parameters()
