"""The command lines' shared parts: one-line errors (drpose._cli.command), OpenMP's wait policy
applied by every entry point, progress bars that write plain lines into logs."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from drpose import _cli
from drpose._progress import progress


@pytest.mark.parametrize(("busy_jiffies", "expected"), [(10, False), (90, False), (110, True)])
def test_busy_machine_counts_other_processes_cores(monkeypatch, busy_jiffies, expected):
    """2 listed CPUs, 200 jiffies in the window: busy when others use >= 1 of the 2 cores."""
    samples = iter([(1000, 900, 2), (1200, 1100 - busy_jiffies, 2)])
    monkeypatch.setattr(_cli, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(_cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _cli.busy_machine(window_s=0) is expected


def test_command_turns_user_errors_into_one_line(capsys):
    @_cli.command
    def main(argv):
        raise _cli.UsageError(f"--size {argv[0]}: must be positive")

    assert main(["-3"]) == 2
    assert capsys.readouterr().err == "error: --size -3: must be positive\n"
    with pytest.raises(_cli.UsageError):
        main(["-3", "--debug"])


ENTRY_POINTS = [("drpose.train", ["--help"]), ("drpose.infer", ["--help"]),
                ("drpose.eval", ["--help"]), ("drpose.data", ["build", "--help"])]


@pytest.mark.parametrize(("module", "args"), ENTRY_POINTS)
def test_entry_point_applies_the_openmp_wait_policy_before_torch(module, args, monkeypatch):
    """On a busy machine every command line waits passively, decided before torch loads."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    code = f"""
import os, runpy, sys
from drpose import _cli
seen = []
_cli.busy_machine = lambda window_s=0.3: seen.append("torch" in sys.modules) or True
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
print("POLICY", os.environ.get("OMP_WAIT_POLICY"), seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert "POLICY PASSIVE [False]" in out


def test_progress_writes_plain_lines_when_not_a_terminal():
    log = io.StringIO()
    bar = progress(total=100, desc="carve", file=log)
    for _ in range(100):
        bar.update()
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("carve: 100%")  # 0, 10, ..., 100
    quiet = io.StringIO()
    for _ in progress(range(5), enabled=False, file=quiet):
        pass
    assert quiet.getvalue() == ""
