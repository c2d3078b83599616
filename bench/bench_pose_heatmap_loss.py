"""pose_heatmap_loss forward+backward: the fused kernel against the torch reference.

B=2, V=6, J=23 maps at 96x96 (PSHuman's latent size) and 256x256. On CPU: the C++ kernel vs the
reference, eager and torch.compile'd; on CUDA the same file times the Triton kernel. The
achieved bytes/s counts the bytes the fused kernel must move (logits read twice, gradient
written once) and is compared with a plain copy of the logits.
"""

from __future__ import annotations

import pytest
import torch

from drpose.ops import pose_heatmap_loss, pose_heatmap_loss_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = "triton" if DEVICE == "cuda" else "cpu"
SIZES = [96, 256]


def inputs(size: int):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 23, size, size, generator=gen).to(DEVICE).requires_grad_()
    keypoints = (torch.rand(2, 6, 23, 2, generator=gen) * size).to(DEVICE)
    visible = (torch.rand(2, 6, 23, generator=gen) < 0.9).to(DEVICE)
    return logits, keypoints, visible


def forward_backward(loss_fn):
    def step(logits, keypoints, visible):
        loss_fn(logits, keypoints, visible).backward()
        logits.grad = None

    return step


def fused(logits, keypoints, visible):
    return pose_heatmap_loss(logits, keypoints, visible, backend=FUSED)


COMPILED_REFERENCE = torch.compile(pose_heatmap_loss_reference)
IMPLEMENTATIONS = {  # label: (loss function, is the baseline, memory measurable)
    "torch eager (reference)": (pose_heatmap_loss_reference, True, True),
    "torch.compile (reference)": (COMPILED_REFERENCE, False, False),
    f"fused ({FUSED})": (fused, False, True),
}


@pytest.mark.parametrize("label", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("size", SIZES)
def bench_pose_heatmap_loss(measure, size, label):
    loss_fn, baseline, memory = IMPLEMENTATIONS[label]
    logits, keypoints, visible = inputs(size)
    step = forward_backward(loss_fn)
    moved = 3 * logits.numel() * logits.element_size()
    measure(lambda: step(logits, keypoints, visible), group=f"pose_heatmap_loss {size}x{size}",
            label=label, baseline=baseline, bytes_moved=moved, memory=memory)


@pytest.mark.parametrize("size", SIZES)
def bench_logits_copy(measure, size):
    """The memory-bandwidth yardstick: one read and one write of the logits."""
    logits, _, _ = inputs(size)
    logits = logits.detach()
    out = torch.empty_like(logits)
    measure(lambda: out.copy_(logits), group=f"pose_heatmap_loss {size}x{size}",
            label="copy of logits (yardstick)",
            bytes_moved=2 * logits.numel() * logits.element_size())
