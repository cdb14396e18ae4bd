"""Python source of the configs the tools write: data as literals, never spliced text.

A written config runs at every training, so nothing a user or a checkpoint
supplies (a name, a path, a URL, a recorded setting) may become code in it:

- every value is written by :func:`python_literal`, from plain data only;
- free text (a command line, a path in a header) goes into one-line comments
  by :func:`comment`, with line breaks and other unprintable characters escaped;
- neither ever contains ``{`` or ``}``: mmengine substitutes ``{{ fileDirname }}``
  and ``{{ _base_.key }}`` in a config's *text* before parsing it, so braces in a
  path would be spliced as raw text (a string literal could be closed by the
  substituted folder name). Inside string literals they are written as the
  escapes ``\\x7b`` / ``\\x7d``, which read back as the same characters.
"""
import keyword
import math
from typing import Any, Mapping

_BRACES = {'{': '\\x7b', '}': '\\x7d'}


def _without_braces(text: str) -> str:
    return ''.join(_BRACES.get(ch, ch) for ch in text)


def _escaped(text: str) -> str:
    """``text`` on one line: unprintable characters escaped as in a string literal."""
    return repr(str(text))[1:-1]


def python_literal(value: Any, key: str = 'value') -> str:
    """``value`` as a Python literal, dicts in mmdet's ``dict(key=...)`` style.

    Args:
        value: Plain data: dict (str keys) / list / tuple / str / int / finite
            float / bool / None.
        key: Names ``value`` in errors (e.g. ``model.lors``).

    Raises:
        TypeError: ``value`` holds anything else, named by its key.
        ValueError: a float is not finite (``nan`` / ``inf`` are no literals).
    """
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f'{key}: config dict keys must be strings, got '
                            f'{sorted(map(repr, value))}')
        if all(k.isidentifier() and not keyword.iskeyword(k) for k in value):
            return 'dict(' + ', '.join(
                f'{k}={python_literal(v, f"{key}.{k}")}' for k, v in value.items()) + ')'
        return '{' + ', '.join(
            f'{python_literal(k, key)}: {python_literal(v, f"{key}.{k}")}'
            for k, v in value.items()) + '}'
    if isinstance(value, (list, tuple)):
        items = [python_literal(v, f'{key}[{i}]') for i, v in enumerate(value)]
        if isinstance(value, list):
            return '[' + ', '.join(items) + ']'
        return '(' + ', '.join(items) + (',)' if len(items) == 1 else ')')
    if isinstance(value, str):
        return _without_braces(repr(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f'{key}: {value!r} cannot be written into a config; '
                         'expected a finite number')
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):  # subclasses (numpy's) repr as calls
        return repr(float(value) if isinstance(value, float) else int(value))
    raise TypeError(f'{key}: a {type(value).__name__} cannot be written into a '
                    'config; expected plain data (dict, list, tuple, str, int, '
                    'float, bool, None)')


def assignment(name: str, value: Any) -> str:
    """The line ``name = <literal>`` of a config.

    Args:
        name: A top-level config key (a Python identifier).
        value: Plain data (see :func:`python_literal`).

    Raises:
        ValueError: ``name`` is no identifier.
    """
    if not (isinstance(name, str) and name.isidentifier()
            and not keyword.iskeyword(name)):
        raise ValueError(f'config key {name!r}: expected a Python identifier')
    return f'{name} = {python_literal(value, name)}'


def one_line(text: str) -> str:
    """``text`` made safe for a comment: one line, no braces, whatever it holds.

    Args:
        text: Free text: a command line, a path, a URL.
    """
    return _without_braces(_escaped(text))


def comment(text: str) -> str:
    """``text`` as one comment line (``# ...``), see :func:`one_line`.

    Args:
        text: Free text: a command line, a path, a URL.
    """
    return '# ' + one_line(text)
