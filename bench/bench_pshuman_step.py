"""DrPose reward steps of the **full-size** PSHuman UNet (919.8 M parameters, 7 views x 2 domains)
on the CPU, through ``python -m drpose.train --config pshuman``, at 128² and 256² images (16² and
32² latents): time per UNet call, time per step and peak resident memory.

Per side, in a temporary folder (removed afterwards): the random PSHuman-shaped pipeline
(:mod:`drpose.pipelines.random_pshuman`, files in bfloat16, loaded in float32), 12 poses'
renders and 5 ``skel`` steps on its VAE, a 4-sample DrPose15K, then 2 steps of the preset
(LoRA 32, K = 2 trained steps, gradient checkpointing, KL to the adapters-off UNet) with what a
CPU can afford changed: float32, batch 1 x accumulation 1, 4 denoising steps, no early stop,
CFG 1 (CFG 3 doubles a call's batch; see the README's memory table), 1 evaluation sample.
Those are the commands of ``make gpu-test``'s reward part (``tools/gpu_test.py``), run under
``bench/timed_train.py``, which times every :class:`~drpose.models.MultiViewUNet` call.

Reported per side: the median seconds of a UNet call without and with gradients (batch 14: the
7 views x 2 domains of one sample), each step's time (``log.jsonl``: the first includes
warm-up), and the run's peak resident set (weights in float32 included: ~6.1 GiB of the UNet,
VAE and ViT-H image encoder). The benchmark's own time is the whole training command (loading,
evaluation before and after). About 22 minutes on 2 cores (2026-12-07, 2-core Xeon: 3.5 min at
128², 11.7 min at 256², plus the folders) and 19 GiB of RAM at 256²; leave it out with
``-k "not pshuman"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIDES = (128, 256)
GROUP = "full-size PSHuman reward step, CPU, float32, CFG 1"
CPU_TRAIN = ["--train.mixed_precision", "no", "--batch_size", "1", "--train.grad_accum", "1",
             "--num_steps", "4", "--early_stop", "0", "--guidance_scale", "1"]
NEEDED_RAM_GIB = {128: 10, 256: 19}  # measured peaks (9.0 / 18.1 GiB) and a margin


def gpu_test_module():
    spec = importlib.util.spec_from_file_location("gpu_test", ROOT / "tools" / "gpu_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def available_ram_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


@pytest.mark.parametrize("side", SIDES)
def bench_pshuman_reward_step(benchmark, report, tmp_path, side):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/meminfo and ru_maxrss in KiB (Linux)")
    if available_ram_bytes() < NEEDED_RAM_GIB[side] * 2**30:
        pytest.skip(f"needs ~{NEEDED_RAM_GIB[side]} GiB of free RAM at {side}² (float32)")
    commands = gpu_test_module().reward_commands(
        tmp_path, side=side, device="cpu", pipeline=["--dtype", "bfloat16"], train=CPU_TRAIN)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for command in commands[:-1]:
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    timings = tmp_path / "unet_calls.json"
    train = commands[-1]
    assert train[1:3] == ["-m", "drpose.train"]
    timed = [train[0], str(ROOT / "bench" / "timed_train.py"), str(timings), *train[3:]]

    def run() -> None:
        done = subprocess.run(timed, capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]

    benchmark.group = GROUP
    benchmark.extra_info["side"] = side
    benchmark.pedantic(run, rounds=1, iterations=1)

    measured = json.loads(timings.read_text())
    calls = measured["unet_calls"]
    log = tmp_path / "runs" / "drpose_pshuman" / "log.jsonl"
    steps = [json.loads(line)["step_time_s"] for line in log.read_text().splitlines()
             if "step_time_s" in line]
    assert len(steps) == 2, log.read_text()
    no_grad = statistics.median(s for s, grad, _ in calls if not grad)
    with_grad = statistics.median(s for s, grad, _ in calls if grad)
    batches = sorted({b for _, _, b in calls})
    numbers = {"unet_call_s_no_grad": no_grad, "unet_call_s_grad": with_grad,
               "unet_calls": len(calls), "step_time_s": steps,
               "peak_rss_gib": measured["peak_rss_bytes"] / 2**30}
    benchmark.extra_info.update(numbers)
    report(GROUP, f"{side}² ({side // 8}² latents): UNet call (batch {batches}) "
                  f"{no_grad:.2f} s no grad / {with_grad:.2f} s with grad "
                  f"({len(calls)} calls in the run); steps {steps[0]:.1f} s (warm-up), "
                  f"{steps[1]:.1f} s; peak RSS {numbers['peak_rss_gib']:.2f} GiB")
