"""The check every writer runs before it writes anything: no output is an input.

A converter that writes over the checkpoint it reads replaces a trained model by
a lossy copy of it, and a config written over its own ``_base_`` inherits from
itself. Paths are compared after resolving symlinks and ``..``, and existing
files also by inode (hard links, bind mounts, case-insensitive file systems).
"""
import os.path as osp
from typing import Mapping, Optional

# Inputs that are no local files: a URL, a package config (mmdet::...).
_REMOTE_MARKERS = ('://', '::')


def _local(path: Optional[str]) -> bool:
    return bool(path) and not any(marker in str(path) for marker in _REMOTE_MARKERS)


def same_file(a: str, b: str) -> bool:
    """Whether two local paths name the same file (resolved path or inode).

    Args:
        a: A path (need not exist).
        b: Another path (need not exist).
    """
    if osp.realpath(a) == osp.realpath(b):
        return True
    try:
        return osp.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_outputs(inputs: Mapping[str, Optional[str]],
                  outputs: Mapping[str, Optional[str]]) -> None:
    """Refuse outputs that are an input or another output.

    Call it before anything is written. None entries, URLs and ``package::``
    configs are skipped.

    Args:
        inputs: ``{what: path}`` of the files read (e.g. ``{'checkpoint': ...}``).
        outputs: ``{what: path}`` of the files to be written.

    Raises:
        ValueError: naming the output and the input (or other output) it is.
    """
    inputs = {what: str(path) for what, path in inputs.items() if _local(path)}
    outputs = {what: str(path) for what, path in outputs.items() if _local(path)}
    seen = []
    for what, path in outputs.items():
        for input_what, input_path in inputs.items():
            if same_file(path, input_path):
                raise ValueError(
                    f'the output {what} {path} is the input {input_what} '
                    f'{input_path}: writing it would destroy the input; choose '
                    'another output path')
        for other_what, other_path in seen:
            if same_file(path, other_path):
                raise ValueError(
                    f'the outputs {other_what} and {what} are the same file '
                    f'({path}): choose two different paths')
        seen.append((what, path))
