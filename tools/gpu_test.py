"""``make gpu-test``: what a GPU machine lent for a few minutes should check, in one go.

    python tools/gpu_test.py --out gpu-report          # on a GPU machine (under 8 minutes)
    python tools/gpu_test.py --out DIR --small         # the same plumbing on the CPU (CI)

Parts, each a subprocess with its own time limit, its output in ``DIR/<part>.log``:

1. ``ops``: ``tests/test_on_device.py`` on CUDA tensors (``DRPOSE_TEST_DEVICE=cuda``): the
   compiled Triton kernels and ``csrc/*.cu`` against their references at PSHuman's shapes, and
   a UNet call with the row-attention kernel against torch.
2. ``reward``: the README's "DrPose on PSHuman" commands at 768² on a random full-size
   PSHuman-shaped pipeline in bf16 (``drpose.pipelines.random_pshuman``): renders and a few
   ``skel`` steps on its VAE, a 4-sample DrPose15K, then 2 optimisation steps of
   ``python -m drpose.train --config pshuman`` (batch 2 x accumulation 2, CFG 3, LoRA 32):
   time per step (``log.jsonl``) and the stage's peak GPU memory (``metrics.json``).
3. ``bench``: the kernel benchmarks (Triton vs torch eager / SDPA / torch.compile).

``DIR/report.md`` gathers the machine, each part's status and time, the step times, the peak
memory and the benchmark tables. A failing part does not stop the others (a part that needs
an earlier one's files is skipped, saying so). ``--small`` runs part 2 on the CPU with the
small PSHuman-shaped pipeline at 64 px and skips parts 1 and 3 (the test suite covers them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Part:
    name: str
    status: str  # "passed" | "failed (rc N)" | "timed out" | "skipped: why"
    seconds: float
    tail: str


def run_part(name: str, commands: list[list[str]], out: Path, limit_s: float,
             env: dict[str, str]) -> Part:
    """Run ``commands`` in order (stopping at the first failure) within ``limit_s`` in all;
    their output goes to ``out/<name>.log``."""
    started = time.perf_counter()
    log = out / f"{name}.log"
    with log.open("w") as sink:
        for command in commands:
            left = limit_s - (time.perf_counter() - started)
            sink.write(f"$ {' '.join(command)}\n")
            sink.flush()
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, stdout=sink,
                                      stderr=subprocess.STDOUT, timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                status = "timed out"
                break
            if done.returncode:
                status = f"failed (rc {done.returncode})"
                break
        else:
            status = "passed"
    text = log.read_text()
    return Part(name, status, time.perf_counter() - started, text[-3000:])


def reward_commands(work: Path, *, side: int, device: str, pipeline: list[str],
                    train: list[str]) -> list[list[str]]:
    """The README's PSHuman steps at ``side`` px, small in count: a random PSHuman-shaped
    pipeline (``pipeline``: extra ``random_pshuman`` flags), 12 poses' renders, 5 ``skel`` steps
    on its VAE, a 4-sample DrPose15K, 2 steps of ``--config pshuman`` (``train``: extra flags).
    The last command is ``python -m drpose.train``'s (``bench/bench_pshuman_step.py`` times it)."""
    py = sys.executable
    pipe, renders, data, runs = (work / "pipe", work / "renders", work / "data", work / "runs")
    common = ["--device", device, "--train.runs_dir", str(runs), "--train.progress", "false"]
    return [
        [py, "-m", "drpose.pipelines.random_pshuman", "--out", str(pipe), "--image-side",
         str(side), *pipeline],
        [py, "-m", "drpose.data", "renders", "--out", str(renders), "--resolution", str(side),
         "--num-poses", "12", "--held-out", "4"],
        [py, "-m", "drpose.train", "skel", "--pipeline", str(pipe), "--renders", str(renders),
         "--train.steps", "5", "--train.checkpoint_every", "5", *common],
        [py, "-m", "drpose.data", "build", "--motion", "default", "--out", str(data),
         "--anchors", "2", "--neighbours", "1", "--resolution", str(side), "--no-progress"],
        [py, "-m", "drpose.train", "--config", "pshuman", "--pipeline", str(pipe),
         "--skel", str(runs / "skel" / "skel"), "--data", str(data), "--held_out", "2",
         "--eval_samples", "1", "--image_every", "0", "--train.steps", "2",
         "--train.log_every", "1", "--train.checkpoint_every", "2", *common, *train],
    ]


def reward_numbers(work: Path) -> dict[str, object]:
    """Step times (s) and peak GPU memory (GiB) of the reward run, from its files."""
    run = work / "runs" / "drpose_pshuman"
    numbers: dict[str, object] = {}
    log = run / "log.jsonl"
    if log.is_file():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        numbers["step_time_s"] = [round(r["step_time_s"], 2) for r in records
                                  if "step_time_s" in r]
    metrics = run / "metrics.json"
    if metrics.is_file():
        saved = json.loads(metrics.read_text())
        if "peak_gpu_memory_bytes" in saved:
            numbers["peak_gpu_memory_gib"] = round(saved["peak_gpu_memory_bytes"] / 2**30, 2)
        for key in ("posescore_before", "posescore_after", "total_s", "devices"):
            if key in saved:
                numbers[key] = saved[key]
    return numbers


def machine() -> str:
    try:
        import torch
    except ImportError:
        return f"{platform.node()}: torch is not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
            f"{os.cpu_count()} cores; python {platform.python_version()}")


def report(parts: list[Part], numbers: dict[str, object], started: str, small: bool) -> str:
    lines = [f"# drpose gpu-test{' (--small, CPU)' if small else ''}", "",
             f"- date: {started}", f"- machine: {machine()}", ""]
    lines += ["| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {p.name} | {p.status} | {p.seconds:.0f} |" for p in parts]
    lines += ["", "## reward steps", "", "```json", json.dumps(numbers, indent=1), "```"]
    for part in parts:
        lines += ["", f"## {part.name} (last lines of {part.name}.log)", "", "```",
                  part.tail.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-report")
    parser.add_argument("--small", action="store_true",
                        help="part 2 on the CPU with the small pipeline at 64 px (CI)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    device = "cpu" if args.small else "cuda"
    if not args.small:
        env.pop("TRITON_INTERPRET", None)  # the compiled kernels, not the interpreter
    py = sys.executable
    parts = []
    if not args.small:
        parts.append(run_part("ops", [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       "tests/test_on_device.py"]], out, 150,
                              {**env, "DRPOSE_TEST_DEVICE": "cuda"}))
    work = out / "work"
    if args.small:  # CPU: the small pipeline at 64 px, short rollouts
        commands = reward_commands(work, side=64, device=device, pipeline=["--small"],
                                   train=["--num_steps", "3", "--early_stop", "1"])
    else:
        commands = reward_commands(work, side=768, device=device,
                                   pipeline=["--dtype", "bfloat16"], train=[])
    parts.append(run_part("reward", commands,
                          out, 600 if args.small else 270, env))
    numbers = reward_numbers(work)
    if not args.small:
        parts.append(run_part("bench", [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                         "bench/bench_pose_heatmap_loss.py",
                                         "bench/bench_row_attention.py", "--benchmark-only",
                                         "--benchmark-columns=median,rounds"]], out, 120, env))
    text = report(parts, numbers, started, args.small)
    (out / "report.md").write_text(text)
    print(text)
    return 0 if all(p.status == "passed" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
