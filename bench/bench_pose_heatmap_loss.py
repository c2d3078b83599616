"""pose_heatmap_loss forward+backward: the fused kernel against the torch reference.

B=2, V=6, J=23 maps at 96x96 (PSHuman's latent size) and 256x256, with 1 and 2 torch threads. On
CPU: the one-pass C++ kernel (the default when the logits need a gradient), the two-pass C++ path
it replaced (loss kernel, then a backward kernel that reads the logits again), and the reference,
eager and torch.compile'd (compiled afresh for each thread count); on CUDA the same file times the
Triton kernel. The achieved bytes/s counts the bytes the one-pass kernel must move (logits read
once, gradient written once) and is compared with a plain copy of the logits.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from drpose.ops import pose_heatmap_loss, pose_heatmap_loss_reference

heatmap_op = importlib.import_module("drpose.ops.pose_heatmap_loss")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = "triton" if DEVICE == "cuda" else "cpu"
SIZES = [96, 256]
THREADS = [1, 2]


def inputs(size: int):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 23, size, size, generator=gen).to(DEVICE).requires_grad_()
    keypoints = (torch.rand(2, 6, 23, 2, generator=gen) * size).to(DEVICE)
    visible = (torch.rand(2, 6, 23, generator=gen) < 0.9).to(DEVICE)
    return logits, keypoints, visible


def fused(logits, keypoints, visible):
    return pose_heatmap_loss(logits, keypoints, visible, backend=FUSED)


def two_pass(logits, keypoints, visible):
    one_pass = heatmap_op.ONE_PASS_BACKENDS
    heatmap_op.ONE_PASS_BACKENDS = ()
    try:
        return fused(logits, keypoints, visible)
    finally:
        heatmap_op.ONE_PASS_BACKENDS = one_pass


def compiled_reference():
    torch._dynamo.reset()  # compile for this thread count, not one cached from another
    return torch.compile(pose_heatmap_loss_reference)


IMPLEMENTATIONS = {  # label: (make the loss function, is the baseline, memory measurable)
    "torch eager (reference)": (lambda: pose_heatmap_loss_reference, True, True),
    "torch.compile (reference)": (compiled_reference, False, False),
    f"fused {FUSED}, two-pass (before)": (lambda: two_pass, False, True),
    f"fused {FUSED}, one pass": (lambda: fused, False, True),
}


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}thread")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def rounds(size: int) -> int:
    """Timed rounds: a median of 5 steps of a few ms moved by 30% between runs."""
    return 31 if size <= 96 else 5


def group(size: int, threads: int) -> str:
    return f"pose_heatmap_loss {size}x{size}, {threads} thread{'s' if threads > 1 else ''}"


@pytest.mark.parametrize("label", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("size", SIZES)
def bench_pose_heatmap_loss(measure, threads, size, label):
    make, baseline, memory = IMPLEMENTATIONS[label]
    loss_fn = make()
    logits, keypoints, visible = inputs(size)

    def step():
        loss_fn(logits, keypoints, visible).backward()
        logits.grad = None

    moved = 2 * logits.numel() * logits.element_size()
    measure(step, group=group(size, threads), label=label, baseline=baseline, bytes_moved=moved,
            memory=memory, rounds=rounds(size))


@pytest.mark.parametrize("size", SIZES)
def bench_logits_copy(measure, threads, size):
    """The memory-bandwidth yardstick: one read and one write of the logits."""
    logits, _, _ = inputs(size)
    logits = logits.detach()
    out = torch.empty_like(logits)
    measure(lambda: out.copy_(logits), group=group(size, threads),
            label="copy of logits (yardstick)",
            bytes_moved=2 * logits.numel() * logits.element_size(), rounds=rounds(size))
