"""The reward stage's data, loaded 1x and 4x the samples: resident memory and items per second.

A DrPose15K folder of 128 samples at 256 x 256 (the packaged motion, windows of 2 frames) is read
in full, sample after sample, the way training reads it, in a fresh process per measurement:

* ``stacked float32``: every image decoded and stacked in memory (what the reward stage did
  before :mod:`drpose.data.stream`): memory grows with the number of samples;
* ``streamed, W workers``: :class:`drpose.data.stream.StepBatches` over
  :class:`~drpose.data.stream.DrPose15KPairs` (one PNG per item, uint8), batch 2, with W
  DataLoader worker processes.

Each row is the peak resident set (``ru_maxrss``) of the measuring process (workers included:
the largest child's, added; a forked worker's count includes the pages it shares with its
parent) less that of the same process after its imports, and the items per second of the
pass. Per item the data are the same size at 1x and 4x (32 and 128 samples), so a streamed
row's memory should not grow with the count, a stacked one's should grow 4x.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

SIDE, SAMPLES = 256, 128
GROUP = f"reward-stage data, DrPose15K at {SIDE}x{SIDE}"
MODES = ("stacked float32", "streamed, 0 workers", "streamed, 2 workers")


def max_rss_bytes() -> int:
    """Peak resident set of this process plus that of its largest finished child (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * 1024


def measure(folder: Path, mode: str, count: int) -> dict[str, float]:
    """Read the first ``count`` samples of ``folder`` in ``mode``; the measurement's dict."""
    import torch

    from drpose.data import DrPoseDataset
    from drpose.data.stream import DrPose15KPairs, StepBatches, step_picks

    dataset = DrPoseDataset(folder)
    base = max_rss_bytes()
    started = time.perf_counter()
    if mode == "stacked float32":
        images = torch.stack([dataset[i]["image"] for i in range(count)])
        assert images.shape[0] == count
    else:
        workers = int(mode.split(", ")[1].split()[0])
        pairs = DrPose15KPairs(dataset, range(count))
        steps = count // 2  # batch 2: count items read, as training reads them
        batches = StepBatches(pairs, 2, 0, 0, steps, device=torch.device("cpu"),
                              workers=workers)
        for index in range(steps):
            batches.get(index, step_picks(0, index, 0, count, 2)[1])
        batches.close()
        gc.collect()  # the loader's workers exit and are waited for (RUSAGE_CHILDREN)
    seconds = time.perf_counter() - started
    return {"rss_bytes": max_rss_bytes() - base, "items_per_s": count / seconds}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "ds"
    subprocess.run([sys.executable, "-m", "drpose.data", "build", "--motion", "default",
                    "--out", str(out), "--anchors", str(SAMPLES // 2), "--neighbours", "1",
                    "--resolution", str(SIDE), "--no-progress"], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1, 4])
def test_data_stream(benchmark, folder, mode, scale, report):
    count = SAMPLES // 4 * scale

    def run() -> dict[str, float]:
        out = subprocess.run([sys.executable, __file__, str(folder), mode, str(count)],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = GROUP
    benchmark.extra_info.update(mode=mode, samples=count, **result)
    report(GROUP, f"{mode}, {scale}x ({count} samples): resident +"
                  f"{result['rss_bytes'] / 2**20:.1f} MiB, {result['items_per_s']:.0f} items/s")


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
