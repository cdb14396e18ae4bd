"""Argument checks shared by the LORS modules."""
from typing import List, Sequence, Union


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
