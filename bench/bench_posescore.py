"""PoseScore forward+backward (w.r.t. the latents) per sample: the fused heatmap loss
(``backend="cpu"``, or Triton on CUDA) against the materialised torch reference, g_skel included.

Shapes: the tiny CPU default (6 views, latents 8 x 16 x 16 = normal | colour, maps 32 x 32) and
PSHuman's (6 views, latents 8 x 96 x 96, maps 96 x 96 and 256 x 256), one sample (B = 1), g_skel
random-init with the default widths (the weights do not change the cost).
"""

from __future__ import annotations

import pytest
import torch

from drpose.models import SkeletonNet
from drpose.reward import PoseScore

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = "triton" if DEVICE == "cuda" else "cpu"
SHAPES = {  # name: (latent side, map side)
    "tiny 16->32": (16, 32),
    "pshuman 96->96": (96, 96),
    "pshuman 96->256": (96, 256),
}
BACKENDS = {f"fused ({FUSED})": (FUSED, False), "torch reference": ("torch", True)}


def inputs(latent: int):
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 6, 8, latent, latent, generator=gen).to(DEVICE).requires_grad_()
    joints = (torch.rand(1, 23, 3, generator=gen) - 0.5).to(DEVICE) * 0.8  # normalised coords
    return latents, joints


@pytest.mark.parametrize("label", list(BACKENDS))
@pytest.mark.parametrize("shape", list(SHAPES))
def bench_posescore(measure, shape, label):
    latent, maps = SHAPES[shape]
    backend, baseline = BACKENDS[label]
    torch.manual_seed(0)
    net = SkeletonNet(map_size=maps).to(DEVICE)
    reward = PoseScore(net, sigma=1.5 * maps / 32, backend=backend)
    latents, joints = inputs(latent)

    def step():
        reward(latents, joints).sum().backward()
        latents.grad = None

    measure(step, group=f"posescore fwd+bwd per sample, {shape}", label=label,
            baseline=baseline, rounds=3 if maps < 256 else 2)
