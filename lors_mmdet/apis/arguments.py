"""The command-line values the workflow tools share, parsed into what the
workflows take (``tools/compress.py``, ``tools/convert_checkpoint.py``)."""
import argparse
from typing import Dict, Optional, Sequence, Union

from lors_mmdet.models.compression import STACK_PARTS


def _positive_int(text: str) -> Optional[int]:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def parse_rank(value: str) -> Union[int, str]:
    """``--rank``: a positive int or ``'full'`` (an ``argparse`` type).

    Args:
        value: The argument as given.

    Raises:
        argparse.ArgumentTypeError: naming ``--rank`` and the value.
    """
    if value == 'full':
        return value
    rank = _positive_int(value)
    if rank is None:
        raise argparse.ArgumentTypeError(
            f"--rank must be a positive int or 'full', got {value!r}")
    return rank


def parse_rank_overrides(items: Sequence[str]) -> Dict[Optional[str],
                                                        Dict[str, int]]:
    """``--ranks``: ``['[PART:]PATTERN=R', ...]`` -> ``{part or None: {pattern: R}}``.

    Args:
        items: The arguments as given.

    Raises:
        ValueError: naming ``--ranks`` and the item that does not parse.
    """
    found: Dict[Optional[str], Dict[str, int]] = {}
    for item in items or ():
        pattern, sep, value = item.rpartition('=')
        part, colon, glob = pattern.partition(':')
        if not colon:
            part, glob = None, pattern
        rank = _positive_int(value)
        if not sep or not glob or rank is None or (part is not None
                                                   and part not in STACK_PARTS):
            raise ValueError(f'--ranks takes [PART:]PATTERN=RANK (PART in '
                             f'{STACK_PARTS}, RANK a positive int), got {item!r}')
        found.setdefault(part, {})[glob] = rank
    return found
