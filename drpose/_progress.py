"""Progress bars that suit where the output goes: tqdm's redrawn bar on a terminal; in a log
file or a pipe, one plain line every ``every`` steps (and at the end), never a carriage return
or cursor code. Every progress bar of the package comes from :func:`progress`."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

LINES_PER_BAR = 10  # plain lines a bar of known total writes when its output is not a terminal
STEPS_PER_LINE_UNKNOWN_TOTAL = 10


class _LineProgress(tqdm):
    """tqdm writing a whole line per display; displays only every ``miniters`` steps (set by
    :func:`progress`) and once at the end; nothing is ever redrawn or cleared."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing a finished bar: a log keeps its lines
            return False
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and self.n != self.last_print_n:
            self.display()
        super().close()


def progress(iterable: Iterable | None = None, *, enabled: bool = True, every: int | None = None,
             file: IO[str] | None = None, **options: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand), ``options`` passed to tqdm (``total``,
    ``desc``, ``unit``, ``initial``, ...).

    Args:
        enabled: False gives a disabled bar (prints nothing, still counts).
        every: when ``file`` is not a terminal, steps between plain lines (default: a tenth of
            the total, or 10 steps when the total is unknown).
        file: where to write (default: stderr).
    """
    file = file or sys.stderr
    if not enabled:
        return tqdm(iterable, disable=True, **options)
    if file.isatty():
        return tqdm(iterable, file=file, **options)
    total = options.get("total")
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if every is None:
        every = (max(1, math.ceil(total / LINES_PER_BAR)) if total
                 else STEPS_PER_LINE_UNKNOWN_TOTAL)
    options = {k: v for k, v in options.items() if k != "dynamic_ncols"}
    return _LineProgress(iterable, file=file, miniters=every, mininterval=0,
                         maxinterval=math.inf, leave=False, ascii=True, **options)
