"""Shared measurement for the benchmark suite: time (pytest-benchmark), peak tensor memory, and a
closing table of ratios against each group's torch baseline.

Peak memory is :func:`drpose._memory.peak_memory_bytes` (the CUDA allocator's peak, or on the CPU
the bytes of live tensors the function allocated).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import pytest
import torch

from drpose._memory import peak_memory_bytes


@dataclass
class Result:
    seconds: float
    peak_bytes: int | None
    baseline: bool
    bytes_moved: int | None


RESULTS: dict[str, dict[str, Result]] = {}


@pytest.fixture
def measure(benchmark):
    """measure(fn, group=, label=, baseline=False, bytes_moved=None): time and peak memory."""

    def run(fn, *, group: str, label: str, baseline: bool = False,
            bytes_moved: int | None = None, rounds: int = 5, memory: bool = True,
            warmup: bool = True) -> None:
        """``memory=False`` for compiled functions on CPU: the dispatch mode would not see
        inside a compiled graph, so no number is reported rather than a wrong one.
        ``warmup=False`` for runs of minutes (a whole benchmark): ``fn`` runs ``rounds`` times
        and nothing else, the first round included in the timing."""
        if warmup:
            fn()  # warm-up (and torch.compile's compilation), outside the timing
        peak = peak_memory_bytes(fn) if memory or torch.cuda.is_available() else None
        benchmark.group = group
        benchmark.extra_info.update(label=label, peak_bytes=peak, baseline=baseline)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=int(warmup))
        RESULTS.setdefault(group, {})[label] = Result(benchmark.stats.stats.median, peak,
                                                     baseline, bytes_moved)

    return run


NOTES: dict[str, list[str]] = {}


@pytest.fixture
def report():
    """report(group, line): a line printed under ``group`` after the ratio tables (for
    measurements that are not a time and a tensor peak, e.g. resident memory)."""

    def add(group: str, line: str) -> None:
        NOTES.setdefault(group, []).append(line)

    return add


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{device}, torch {torch.__version__}")


def pytest_terminal_summary(terminalreporter) -> None:
    write = terminalreporter.write_line
    for group, lines in NOTES.items():
        write(f"\n[{group}] (machine: {machine()})")
        for line in lines:
            write(f"  {line}")
    if not RESULTS:
        return
    write("")
    write(f"drpose benchmark ratios (machine: {machine()})")
    write("speed-up = baseline time / time; memory = peak tensor bytes allocated by the call")
    for group, rows in RESULTS.items():
        base = next((r for r in rows.values() if r.baseline), None)
        write(f"\n[{group}]")
        write(f"  {'label':<28}{'median ms':>11}{'peak MB':>10}{'speed-up':>10}"
              f"{'mem ratio':>11}{'GB/s':>8}")
        for label, r in rows.items():
            speed = f"{base.seconds / r.seconds:.2f}x" if base else "-"
            known = r.peak_bytes is not None and base and base.peak_bytes
            mem = f"{r.peak_bytes / base.peak_bytes:.3f}" if known else "-"
            peak = f"{r.peak_bytes / 1e6:.2f}" if r.peak_bytes is not None else "n/a"
            rate = f"{r.bytes_moved / r.seconds / 1e9:.2f}" if r.bytes_moved else "-"
            write(f"  {label:<28}{r.seconds * 1e3:>11.2f}{peak:>10}"
                  f"{speed:>10}{mem:>11}{rate:>8}")
