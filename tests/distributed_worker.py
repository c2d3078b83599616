"""Run by tests/test_distributed.py under torchrun: a few Trainer steps on each CPU process
(gloo), each rank on its own data, then every rank saves its parameters."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from drpose.train.engine import StepOutput, TrainConfig, Trainer, step_generator


def main(out_dir: str) -> None:
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
    state = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    save_file(state, str(Path(out_dir) / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
