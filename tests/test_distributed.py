"""Two CPU processes (gloo) through accelerate, for the generic Trainer and for DrPose reward
fine-tuning: replicas stay identical, and the gradient each applies is the average over ranks
(not one rank's)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(mode: str, out: Path, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent)}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={port}", str(WORKER), mode, str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("mode", ["toy", "reward"])
def test_two_process_replicas_stay_identical(tmp_path, mode):
    launch(mode, tmp_path / "two", 2)
    rank0 = load_file(tmp_path / "two" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "two" / "rank1.safetensors")
    launch(mode, tmp_path / "one", 1)
    alone = load_file(tmp_path / "one" / "rank0.safetensors")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # rank 1's data differ, so the averaged run must differ from a single-process run
    assert any(not torch.allclose(rank0[n], alone[n]) for n in rank0)
