"""``python bench/timed_train.py OUT.json ARGS...``: ``python -m drpose.train ARGS...`` with every
multi-view UNet call timed, for :mod:`bench_pshuman_step` (CPU: a call's wall time is its compute).

``OUT.json`` gets ``unet_calls``: one ``[seconds, grad_enabled, batch]`` per call of
:meth:`drpose.models.MultiViewUNet.forward` (``batch``: the sample's leading size, views and
domains included), and ``peak_rss_bytes``: the process's peak resident set (``ru_maxrss``).
"""

from __future__ import annotations

import json
import resource
import runpy
import sys
import time
from pathlib import Path


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    from drpose._cli import apply_openmp_wait_policy

    apply_openmp_wait_policy()  # as ``python -m drpose.train`` does, before torch loads
    import torch

    from drpose.models import MultiViewUNet

    calls: list[list[float | bool | int]] = []
    forward = MultiViewUNet.forward

    def timed(self, sample, *rest, **kwargs):
        started = time.perf_counter()
        result = forward(self, sample, *rest, **kwargs)
        calls.append([time.perf_counter() - started, torch.is_grad_enabled(), sample.shape[0]])
        return result

    MultiViewUNet.forward = timed
    sys.argv = ["drpose.train", *args]
    try:
        runpy.run_module("drpose.train", run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if done.code:
            raise
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        out.write_text(json.dumps({"unet_calls": calls, "peak_rss_bytes": peak}))


if __name__ == "__main__":
    main()
