"""Argument checks shared by the LORS modules."""
import math
from typing import List, Mapping, Sequence, Tuple, Union


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive int, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {value!r} '
                        f'({type(value).__name__})')
    if value <= 0:
        raise ValueError(f'{name} must be > 0, got {value}')
    return value


def per_layer(value: Union[int, Sequence[int]], num_layers: int,
              name: str) -> List[int]:
    """Expand an int or a per-layer list into a list of ``num_layers`` ints.

    Args:
        value: one int for every layer, or a sequence with one int per layer.
        num_layers: the number of layers in the stack.
        name: the argument's name, used in error messages.
    """
    check_positive_int(num_layers, 'num_layers')
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f'{name} must have one entry per layer '
                             f'(num_layers={num_layers}), got {len(value)} '
                             f'entries: {list(value)}')
        return [check_positive_int(v, f'{name}[{i}]')
                for i, v in enumerate(value)]
    return [check_positive_int(value, name)] * num_layers


def max_useful_terms(shape: Tuple[int, int], core_size: int) -> int:
    """The most adaptive terms an ``m x n`` matrix can use with ``k x k`` cores.

    ``ceil(m / k) * ceil(n / k)`` terms, each with ``L_t`` / ``R_t`` selecting
    the rows / columns of one ``k x k`` tile, already cover the matrix: the
    private residual ``sum_t L_t Z_t(q) R_t`` can then be any affine function
    of the query, i.e. everything a dense private generator could produce.
    A further term adds parameters but nothing the layer can express.

    Args:
        shape: ``(m, n)`` of the generated matrix.
        core_size: ``k``.
    """
    m, n = shape
    return math.ceil(m / core_size) * math.ceil(n / core_size)


def check_adaptive_terms(adaptive_terms: int, core_size: int,
                         shapes: Mapping[str, Tuple[int, int]],
                         name: str) -> int:
    """Return ``adaptive_terms`` unless no matrix of ``shapes`` can use that
    many.

    The same ``K`` terms correct every matrix of a layer, so the bound is the
    largest :func:`max_useful_terms` of them: above it every matrix is already
    fully covered.

    Args:
        adaptive_terms: ``K`` (checked to be a positive int).
        core_size: ``k``.
        shapes: a description of each generated matrix -> its ``(m, n)``,
            e.g. ``{'channel-mixing M': (c, c)}``.
        name: the config key, used in the error message.
    """
    check_positive_int(adaptive_terms, name)
    limits = {label: max_useful_terms(shape, core_size)
              for label, shape in shapes.items()}
    bound = max(limits.values())
    if adaptive_terms > bound:
        tiles = ', '.join(f'{label} {m}x{n} takes {limits[label]}'
                          for label, (m, n) in shapes.items())
        raise ValueError(
            f'{name} = {adaptive_terms} is out of range [1, {bound}]: '
            f'{bound} terms of {core_size}x{core_size} cores already tile '
            f'every matrix they correct ({tiles}), so more terms add '
            'parameters but nothing the private residual could express')
    return adaptive_terms


def check_shapes(shapes: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Check a list of ``(m, n)`` matrix shapes of positive ints."""
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes,
                                                          (list, tuple)):
        raise TypeError(f'shapes must be a sequence of (m, n) pairs, got '
                        f'{shapes!r}')
    if len(shapes) == 0:
        raise ValueError('shapes must name at least one (m, n) matrix shape, '
                         'got []')
    checked = []
    for j, shape in enumerate(shapes):
        if not isinstance(shape, (list, tuple)) or len(shape) != 2:
            raise ValueError(f'shapes[{j}] must be an (m, n) pair, got '
                             f'{shape!r}')
        checked.append((check_positive_int(shape[0], f'shapes[{j}][0]'),
                        check_positive_int(shape[1], f'shapes[{j}][1]')))
    return checked
