"""Progress of the long CPU jobs (data generation, backbone pretraining).

On a terminal: a tqdm bar. Anywhere else (a CI log, a file, a pipe): tqdm would
write one carriage-return-separated line per refresh, so a plain line is printed
instead every tenth of the work, which reads well in a log.
"""
import sys
import time
from typing import IO, Optional, Union

Number = Union[int, float]


class LineProgress:
    """A tqdm stand-in for logs: ``desc: 300/1000 img (30%), 4.1 s, loss=0.52``
    every ``1 / lines`` of ``total`` and at the end.

    Args:
        total: Amount of work.
        desc: What is being done (the line's prefix).
        unit: Unit of the work.
        stream: Where the lines go.
        lines: Most lines printed.
    """

    def __init__(self, total: int, desc: str, unit: str, stream: IO[str],
                 lines: int = 10) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.step = max(total // lines, 1)
        self.count = 0
        self.postfix = ''
        self.start = time.perf_counter()
        self.closed = False

    def set_postfix(self, **values: Number) -> None:
        self.postfix = ', '.join(f'{key}={value:.4g}' for key, value in values.items())

    def update(self, n: int = 1) -> None:
        before = self.count
        self.count += n
        if self.count // self.step > before // self.step or self.count == self.total:
            self._print()

    def close(self) -> None:
        if not self.closed and self.count % self.step and self.count != self.total:
            self._print()  # an interrupted job: say where it stopped
        self.closed = True

    def _print(self) -> None:
        percent = 100 * self.count / max(self.total, 1)
        line = (f'{self.desc}: {self.count}/{self.total} {self.unit} ({percent:.0f}%), '
                f'{time.perf_counter() - self.start:.1f} s')
        print(line + (f', {self.postfix}' if self.postfix else ''), file=self.stream,
              flush=True)


def progress_bar(total: int, desc: str, unit: str = 'it', stream: Optional[IO[str]] = None):
    """A progress bar over ``total`` units of work: ``update(n)``, ``set_postfix(**values)``,
    ``close()``.

    Args:
        total: Amount of work.
        desc: What is being done.
        unit: Unit of the work (``'img'``, ``'iter'``).
        stream: Where it is shown (default: standard error, as tqdm).

    Returns:
        A ``tqdm`` bar if ``stream`` is a terminal, else a :class:`LineProgress`.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, 'isatty', None)
    if isatty is not None and isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, stream)
