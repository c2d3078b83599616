"""What every ``python -m drpose.*`` command line shares: one-line errors and OpenMP's waits.

Errors: decorate a command's ``main(argv: Sequence[str] | None = None) -> int | None`` with
:func:`command`. A mistake the user can fix (:class:`UsageError`, and the ``OSError`` /
``ValueError`` family that file reading and argument checks raise) then ends the command with one
line ``error: <message>`` on stderr and exit status 2, instead of a traceback; ``--debug``
anywhere on the command line re-raises it with its traceback. Raise :class:`UsageError` with a
message that names the bad file, flag or value and what to do.

OpenMP: :func:`apply_openmp_wait_policy` must run before torch is imported (OpenMP reads
``OMP_WAIT_POLICY`` once, when it loads); an entry module calls it above its other imports::

    from drpose._cli import apply_openmp_wait_policy, command

    if __name__ == "__main__":  # decided before torch loads OpenMP
        apply_openmp_wait_policy()

    import torch  # ruff accepts imports after an ``if`` block

This module imports the standard library only.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
USAGE_EXIT = 2  # exit status of a command stopped by a user's mistake (argparse's too)


class UsageError(Exception):
    """A mistake the user can fix: bad flag, value or input file. The message is the whole
    one-line report: name the file, flag or value, and what to do."""


# What a command line reports as one line: the user's mistakes, and what reading a bad or
# missing file raises (FileNotFoundError, PermissionError, IsADirectoryError, PIL's
# UnidentifiedImageError and zipfile.BadZipFile's cousins are OSError or ValueError subclasses).
USER_ERRORS: tuple[type[BaseException], ...] = (UsageError, OSError, ValueError)

Main = Callable[[Sequence[str] | None], "int | None"]


def command(main: Main) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's ``main(argv)``: ``argv`` None reads ``sys.argv[1:]``; ``--debug`` is
    taken out of it (and makes errors raise); a :data:`USER_ERRORS` exception becomes
    ``error: ...`` on stderr and the return value :data:`USAGE_EXIT`; ``None`` returns 0."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        debug = DEBUG_FLAG in args
        args = [a for a in args if a != DEBUG_FLAG]
        try:
            status = main(args)
        except USER_ERRORS as error:
            if debug:
                raise
            print(f"error: {one_line(error)}", file=sys.stderr)
            return USAGE_EXIT
        return 0 if status is None else int(status)

    return run


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a missing file's errno text names the file)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def apply_openmp_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep half the cores busy
    (:func:`busy_machine`); a policy the user set is kept. Call before torch is imported."""
    if "OMP_WAIT_POLICY" not in os.environ and busy_machine():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def apply_niced_thread_limit() -> None:
    """Set ``OMP_NUM_THREADS=1`` in a niced process (``os.nice(0) > 0``) unless the user set a
    thread count. Call before torch is imported. A niced process gets a small share of a core a
    normal-priority process also runs on, and each OpenMP parallel region waits at its barrier
    for the slowest thread: measured on the 2-core development machine (2026-12-06, ``nice -n
    10`` beside one busy process), a VAE step of ``python -m drpose.eval experiment`` took 5.4 s
    with 2 threads and 0.27 s with 1."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "nice") and os.nice(0) > 0:
        os.environ["OMP_NUM_THREADS"] = "1"


def busy_machine(window_s: float = 0.3) -> bool:
    """True when other processes keep at least half the cores busy, measured over ``window_s``
    from ``/proc/stat`` (elsewhere: the 1-minute load average). OpenMP's default waits (spin,
    then sleep) suit a quiet machine, passive waits a busy one; measured on the 2-core
    development machine, a reward step of the default: quiet 1.13 s default / 2.42 s passive;
    beside one busy process 4.78 s default / 2.05 s passive."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
    except OSError:
        return os.getloadavg()[0] >= 0.5 * (cores or 1)
    total, idle = after[0] - before[0], after[1] - before[1]
    busy_cores = (total - idle) / max(total, 1) * after[2]
    return busy_cores >= 0.5 * (cores or 1)


def _cpu_times() -> tuple[int, int, int]:
    """(total, idle + iowait) jiffies summed over the CPUs /proc/stat lists, and their count."""
    with open("/proc/stat") as stat:
        lines = stat.read().splitlines()
    fields = [int(x) for x in lines[0].split()[1:]]
    listed = sum(line.startswith("cpu") and line[3:4].isdigit() for line in lines)
    return sum(fields), fields[3] + fields[4], listed
