"""One DrPose training step (rollout, PoseScore, KL, backward) at the tiny config, against the
costlier ways to do it: (a) backpropagating through all T steps, (b) no gradient checkpointing,
(c) a frozen UNet copy for the KL reference instead of disabling the LoRA adapters.

Peak memory is the tensors a step allocates (bench/conftest.py); the weights a variant keeps
resident (a frozen copy) are reported separately as ``resident MB`` in the extra info and in the
ratio table's label, since they exist before the step starts.

Projection to PSHuman's shape (768², 6+1 views x 2 domains, 919.8M UNet parameters): the
activation memory of a step grows with the number of UNet calls that keep a graph (K = 2 here, T
= 20 for (a)) times the activation size of one call (checkpointing keeps only block inputs), so
the ratios measured here for (a) and (b) carry over in kind; (c) adds one UNet's weights,
919.8M x 2 bytes = 1.84 GB in fp16/bf16, whatever the batch.
"""

from __future__ import annotations

import copy

import pytest
import torch

from drpose.models import SkeletonNet
from drpose.pipelines import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train import rollout as rollout_module
from drpose.train.engine import TrainConfig
from drpose.train.reward import RewardConfig, RewardTuner

T = 20


def tuner(variant: str) -> tuple[RewardTuner, torch.Tensor, torch.Tensor]:
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    base = copy.deepcopy(pipe.unet).requires_grad_(False) if variant == "frozen copy" else None
    torch.manual_seed(1)
    reward = PoseScore(SkeletonNet(in_channels=8, channels=(8, 16)), sigma=1.5)
    config = RewardConfig(train=TrainConfig(progress=False), num_steps=T, trained_steps=2,
                          early_stop=0, gradient_checkpointing=variant != "no checkpointing")
    if variant == "all T steps":
        config.trained_steps = T
    tuned = RewardTuner(config, pipe, reward)
    tuned.frozen_unet = base
    pipe.unet.train()
    gen = torch.Generator().manual_seed(0)
    return tuned, torch.rand(1, 3, 32, 32, generator=gen), torch.randn(1, 23, 3, generator=gen)


VARIANTS = ["DrPose loop (K=2, checkpointing, LoRA reference)", "all T steps",
            "no checkpointing", "frozen copy"]


@pytest.mark.parametrize("variant", VARIANTS)
def bench_reward_step(measure, monkeypatch, variant):
    tuned, images, joints = tuner(variant)
    if variant == "all T steps":  # plain backpropagation: no stop-gradient on the UNet input
        real = rollout_module.rollout
        monkeypatch.setattr("drpose.train.reward.rollout",
                            lambda *a, **k: real(*a, **k, stop_gradient=False))
    resident = sum(p.numel() * p.element_size() for p in tuned.frozen_unet.parameters()) \
        if tuned.frozen_unet is not None else 0

    def step():
        out = tuned.loss(images, joints, torch.Generator().manual_seed(3))
        out.loss.backward()
        for p in tuned.parameters:
            p.grad = None

    label = variant if not resident else f"{variant} (+{resident / 1e6:.1f} MB resident)"
    measure(step, group="reward step, tiny config, T=20", label=label,
            baseline=variant == VARIANTS[0], rounds=3)
