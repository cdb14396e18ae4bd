"""How a module declares the matrices it generates from its query.

The surgery's adaptive target kind (:func:`~lors_mmdet.lors.apply_lors` with
``adaptive=dict(...)``) needs to know, for a module such as AdaMixer's
adaptive mixing or Sparse R-CNN's dynamic convolution, which of its linear
maps is the generator and how its output splits into matrices. A module says
so in one of two ways, neither of which needs this package to import the
module's framework:

- a ``lors_generated`` attribute: a dict (or a method returning one, for
  sizes known only per instance), e.g. for AdaMixer's mixing::

      def lors_generated(self):
          c = self.group_channels
          return dict(generator='parameter_generator', groups=self.n_groups,
                      shapes=[(c, c), (self.out_points, self.in_points)])

- for a class one cannot edit, a function registered with
  :func:`declare_generated`, e.g. for mmdet's ``DynamicConv``::

      declare_generated(DynamicConv, lambda m: dict(
          generator='dynamic_layer',
          shapes=[(m.in_channels, m.feat_channels),
                  (m.feat_channels, m.out_channels)]))

The declared layout is :class:`~lors_mmdet.lors.SharedGenerator`'s: the
generator's output, viewed as ``(..., groups, sum(m * n))``, holds per group
the matrices in the order of ``shapes``, each row-major.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

from torch import nn

from ._validate import check_positive_int, check_shapes
from .targets import linear_spec

Declaration = Union['GeneratedWeights', Mapping]
# class -> function(module) returning the module's declaration
DECLARED_GENERATORS: Dict[type, Callable[[nn.Module], Declaration]] = {}
ATTRIBUTE = 'lors_generated'
_KEYS = ('generator', 'shapes', 'groups')


@dataclass(frozen=True)
class GeneratedWeights:
    """What one module generates from its query (validated).

    Attributes:
        generator: path of its generator (an ``nn.Linear`` or a transposed
            linear) inside the module.
        shapes: the ``(m, n)`` shape of each generated matrix.
        groups: how many sets of those matrices the generator makes per
            query (AdaMixer's mixing groups ``G``).
    """
    generator: str
    shapes: Tuple[Tuple[int, int], ...]
    groups: int = 1

    @property
    def out_features(self) -> int:
        """The size of the generator's output the declaration implies."""
        return self.groups * sum(m * n for m, n in self.shapes)


def declare_generated(cls: type,
                      declare: Callable[[nn.Module], Declaration]) -> None:
    """Declare what the modules of class ``cls`` (and its subclasses)
    generate, for classes without a ``lors_generated`` attribute.

    Args:
        cls: a module class.
        declare: ``declare(module)`` returns the module's declaration: a
            :class:`GeneratedWeights` or its dict.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f'cls must be an nn.Module class, got {cls!r}')
    if not callable(declare):
        raise TypeError(f'declare must be a function of the module, got '
                        f'{declare!r}')
    DECLARED_GENERATORS[cls] = declare


def _declaration(module: nn.Module) -> Tuple[Optional[Declaration], str]:
    """The raw declaration of ``module`` (None if none) and where it came
    from, for error messages."""
    for cls in type(module).__mro__:
        if cls in DECLARED_GENERATORS:
            return (DECLARED_GENERATORS[cls](module),
                    f'the declaration registered for {cls.__name__}')
    found = getattr(module, ATTRIBUTE, None)
    if found is None:
        return None, ''
    where = f'{type(module).__name__}.{ATTRIBUTE}'
    return (found() if callable(found) else found), where


def generated_weights(module: nn.Module) -> Optional[GeneratedWeights]:
    """The validated declaration of ``module``; None if it declares nothing.

    Args:
        module: any module.

    Raises:
        TypeError / ValueError naming the declaration and what was
        expected: unknown keys, a path that is not a linear map of the
        module, shapes that do not add up to the generator's output.
    """
    raw, where = _declaration(module)
    if raw is None:
        return None
    if isinstance(raw, GeneratedWeights):
        raw = dict(generator=raw.generator, shapes=raw.shapes,
                   groups=raw.groups)
    if not isinstance(raw, Mapping):
        raise TypeError(f'{where} must be a dict with keys {list(_KEYS)}, '
                        f'got {type(raw).__name__}')
    unknown = sorted(set(raw) - set(_KEYS))
    missing = [k for k in ('generator', 'shapes') if k not in raw]
    if unknown or missing:
        raise ValueError(f'{where}: unknown key(s) {unknown}, missing '
                         f'key(s) {missing}; allowed: {list(_KEYS)}')
    path = raw['generator']
    if not isinstance(path, str) or not path:
        raise TypeError(f'{where}: generator must be the path of a linear '
                        f'map inside the module, got {path!r}')
    try:
        shapes = check_shapes(raw['shapes'])
        declared = GeneratedWeights(
            path, tuple(shapes),
            check_positive_int(raw.get('groups', 1), 'groups'))
    except (TypeError, ValueError) as error:
        raise type(error)(f'{where}: {error}') from None
    try:
        generator = module.get_submodule(path)
    except AttributeError:
        raise ValueError(f'{where}: generator {path!r} is not a submodule of '
                         f'{type(module).__name__}') from None
    spec = linear_spec(generator)
    if spec is None:
        raise TypeError(f'{where}: generator {path!r} must be an nn.Linear '
                        f'or a transposed linear, got '
                        f'{type(generator).__name__}')
    if spec[1] != declared.out_features:
        raise ValueError(
            f'{where}: generator {path!r} has {spec[1]} outputs, the '
            f'declaration groups={declared.groups} x shapes={list(shapes)} '
            f'needs {declared.out_features}')
    if not spec[2]:
        raise ValueError(f'{where}: generator {path!r} has no bias; the '
                         f'shared generator of a LORS stack has one')
    return declared
