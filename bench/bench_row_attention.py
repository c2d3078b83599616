"""row_attention against the rearrange + SDPA path and the reference: time and peak memory.

Shapes: PSHuman's top UNet level (B=2 objects, V=6 body views, 96x96 latent, 5 heads of 64) and
its 24x24 level (20 heads of 64). On CPU the fused Triton path cannot run natively, so CPU runs
time the reference (eager and ``torch.compile``) and rearrange + ``F.scaled_dot_product_attention``
(the op's ``cpu`` backend); CUDA runs add the Triton backend (float16 there, float32 on CPU).

Peak memory is measured, not estimated: on CUDA ``torch.cuda.max_memory_allocated`` above the
inputs, on CPU the kernel's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident set before the call. Each case also reports the bytes
of the rearranged copies the in-place kernel avoids (computed from the shapes).

    pytest bench/bench_row_attention.py --benchmark-only     # pytest-benchmark tables
    python bench/bench_row_attention.py [pshuman-24 ...]      # one summary table
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from drpose.ops import row_attention, row_attention_reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.float16 if DEVICE.type == "cuda" else torch.float32


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    views: int
    height: int
    width: int
    heads: int
    head_dim: int
    rounds: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch * self.views, self.heads, self.height * self.width, self.head_dim)

    def avoided_copy_bytes(self, backward: bool) -> int:
        """Bytes of the rearranged copies the rearrange + SDPA path makes and the fused kernel
        does not: forward q, k, v and the output (4 tensors of q's size); the backward adds
        grad_out and dq, dk, dv (4 more). The forward's 3 input copies also stay alive from the
        forward to the backward, as the tensors SDPA saves."""
        one = torch.Size(self.shape).numel() * DTYPE.itemsize
        return (8 if backward else 4) * one


CASES = [
    Case("pshuman-96", batch=2, views=6, height=96, width=96, heads=5, head_dim=64, rounds=3),
    Case("pshuman-24", batch=2, views=6, height=24, width=24, heads=20, head_dim=64, rounds=10),
]


IMPLEMENTATIONS: dict[str, Callable] = {
    "reference": row_attention_reference,
    "reference-compiled": torch.compile(row_attention_reference, dynamic=False),
    # the op's "cpu" backend: rearrange + F.scaled_dot_product_attention
    "rearrange+sdpa": lambda *t, **kw: row_attention(*t, **kw, backend="cpu"),
}
if DEVICE.type == "cuda":
    IMPLEMENTATIONS["op-triton"] = lambda *t, **kw: row_attention(*t, **kw, backend="triton")


def make_inputs(case: Case, requires_grad: bool) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    return [torch.randn(case.shape, generator=gen, device=DEVICE, dtype=DTYPE)
            .requires_grad_(requires_grad) for _ in range(3)]


def step(impl: Callable, case: Case, inputs: list[torch.Tensor], backward: bool) -> Callable:
    """One call: inference forward, or forward + backward with a ones upstream gradient."""
    opts = dict(views=case.views, height=case.height)

    def run() -> None:
        if backward:
            out = impl(*inputs, **opts)
            out.backward(torch.ones_like(out))
            for t in inputs:
                t.grad = None
        else:
            with torch.no_grad():
                impl(*inputs, **opts)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    return run


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def peak_bytes(run: Callable[[], None]) -> int:
    """Peak memory of one call above the memory held before it (inputs excluded)."""
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    run()
    return (_rss_kib("VmHWM") - base) * 1024


PARAMS = [
    pytest.param(case, name, backward, id=f"{case.name}-{name}-{'bwd' if backward else 'fwd'}")
    for case in CASES for backward in (False, True) for name in IMPLEMENTATIONS
]


@pytest.mark.parametrize(("case", "name", "backward"), PARAMS)
def bench_row_attention(benchmark, case: Case, name: str, backward: bool) -> None:
    inputs = make_inputs(case, requires_grad=backward)
    run = step(IMPLEMENTATIONS[name], case, inputs, backward)
    run()  # warm-up (and Triton compilation)
    benchmark.group = f"row_attention {case.name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark.extra_info["peak_MiB"] = round(peak_bytes(run) / 2**20, 1)
    benchmark.extra_info["avoided_copies_MiB"] = round(case.avoided_copy_bytes(backward) / 2**20, 1)
    benchmark.pedantic(run, rounds=case.rounds, iterations=1)


def main(case_names: list[str]) -> None:
    print(f"device {DEVICE}, dtype {DTYPE}, torch threads {torch.get_num_threads()}")
    print(f"{'case':12} {'pass':7} {'impl':18} {'median s':>9} {'min s':>8} {'peak MiB':>9} "
          f"{'copies avoided MiB':>19}")
    for case in CASES:
        if case_names and case.name not in case_names:
            continue
        for backward in (False, True):
            for name, impl in IMPLEMENTATIONS.items():
                inputs = make_inputs(case, requires_grad=backward)
                run = step(impl, case, inputs, backward)
                run()
                peak = peak_bytes(run)
                times = []
                for _ in range(case.rounds):
                    start = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - start)
                print(f"{case.name:12} {'fwd+bwd' if backward else 'fwd':7} {name:18} "
                      f"{statistics.median(times):9.3f} {min(times):8.3f} {peak / 2**20:9.1f} "
                      f"{case.avoided_copy_bytes(backward) / 2**20:19.1f}", flush=True)
                del inputs, run
                gc.collect()


if __name__ == "__main__":
    main(sys.argv[1:])
