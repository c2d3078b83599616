"""Run by tests/test_distributed.py under torchrun: on each CPU process (gloo), a few steps of
either the generic Trainer on a toy model or DrPose reward fine-tuning on tiny components, each
rank on its own data; then every rank saves its trainable parameters."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from drpose.data.stream import TensorPairs
from drpose.models import SkeletonNet
from drpose.pipelines import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train.engine import StepOutput, TrainConfig, Trainer, step_generator
from drpose.train.reward import RewardConfig, train_reward


def toy(out_dir: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # same initial replica on every rank
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    config = TrainConfig(name="dist", runs_dir=out_dir, steps=4, lr=1e-2, checkpoint_every=10,
                         progress=False)
    trainer = Trainer(config, model)
    rank = trainer.accelerator.process_index

    def step(index):
        gen = step_generator(config.seed, index, rank)  # different data on each rank
        x = torch.randn(8, 4, generator=gen)
        return StepOutput(((model(x) - x.sum(1, keepdim=True) * (rank + 1)) ** 2).mean())

    trainer.fit(step)
    return dict(model.named_parameters())


def reward(out_dir: str) -> dict[str, torch.Tensor]:
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    torch.manual_seed(1)
    score = PoseScore(SkeletonNet(in_channels=8, channels=(8, 16)), sigma=1.5)
    config = RewardConfig(
        train=TrainConfig(name="dist", runs_dir=out_dir, steps=2, lr=1e-2, checkpoint_every=10,
                          progress=False),
        num_steps=3, trained_steps=1, early_stop=1, lora_rank=2, image_every=0, eval_samples=1)
    gen = torch.Generator().manual_seed(0)
    data = TensorPairs(torch.rand(4, 3, 32, 32, generator=gen),
                      torch.randn(4, 23, 3, generator=gen) * 0.3)
    train_reward(config, pipe, score, data, data)
    return {n: p for n, p in pipe.unet.named_parameters() if p.requires_grad}


def main(mode: str, out_dir: str) -> None:
    params = {"toy": toy, "reward": reward}[mode](out_dir)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    state = {n: p.detach().contiguous() for n, p in params.items()}
    save_file(state, str(Path(out_dir) / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
