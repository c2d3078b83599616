"""Memory of one DrPose reward step, measured, split and extrapolated to PSHuman's 768².

One step (:meth:`drpose.train.reward.RewardTuner.loss`, its backward and an AdamW update) of a
given pipeline is run at a few latent sides on the run's device. Its memory is split into

* weights: parameters and buffers of the UNet, VAE, image encoder and g_skel (and the frozen
  reference copy when fully fine-tuning), in their storage dtype;
* gradients and optimizer state: the trainable parameters' ``.grad`` and AdamW's two moments
  (``exp_avg``, ``exp_avg_sq``: 2 x the trainable bytes in fp32);
* activations: the peak of tensors allocated during loss + backward
  (:func:`drpose._memory.peak_memory_bytes`), less the gradients.

Activations grow with the latent area A = h x w (the UNet's feature maps; attention over the rows
of V views is linear in A too, the row length being a width): with two measurements
(A_1, M_1), (A_2, M_2), M(A) = M_1 + (A - A_1) (M_2 - M_1) / (A_2 - A_1). A bf16 run stores its
activations in 2 bytes instead of 4: bf16 activations ~ M / 2 (an upper bound's estimate: norms
and softmax statistics stay fp32 under autocast). ``python -m drpose.train.memory --pipeline DIR``
prints the measurements and the extrapolated table (markdown).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from drpose._cli import command
from drpose._memory import peak_memory_bytes
from drpose.models import SkeletonNet
from drpose.pipelines.multiview import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train.reward import RewardConfig, RewardTuner

GIB = 2**30
GPUS_GB = (24, 48, 80, 141)  # RTX 4090 / L40S / A100-H100 80 GB / H200 (decimal GB as sold)


@dataclass
class StepMemory:
    """One measured reward step. Sizes in bytes; latent_side h = w (image side / VAE factor)."""

    latent_side: int
    batch_size: int
    guidance_scale: float
    gradient_checkpointing: bool
    weights: int
    trainable: int
    gradients: int
    optimizer: int
    activations: int
    seconds: float


def module_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def measure_reward_step(pipe: MultiViewPipeline, reward: PoseScore, config: RewardConfig,
                        latent_side: int, *, seed: int = 0) -> StepMemory:
    """Measure one reward step of ``pipe`` (a copy is adapted, ``pipe`` stays as it is) on random
    ``(batch, 3, S, S)`` images, S = ``latent_side`` x the VAE factor, and random joints."""
    pipe = copy.deepcopy(pipe)
    tuner = RewardTuner(config, pipe, reward)
    device = pipe.device
    generator = torch.Generator(device).manual_seed(seed)
    side = latent_side * pipe.vae_scale_factor
    images = torch.rand(config.batch_size, 3, side, side, generator=generator, device=device)
    joints = torch.rand(config.batch_size, reward.skel_net.config.num_joints, 3,
                        generator=generator, device=device) - 0.5
    optimizer = torch.optim.AdamW(tuner.parameters, lr=config.train.lr)
    frozen = [] if tuner.frozen_unet is None else [tuner.frozen_unet]
    weights = module_bytes([pipe.unet, pipe.vae, pipe.image_encoder, reward.skel_net, *frozen])

    def forward_backward() -> None:
        step = tuner.loss(images, joints, generator)
        step.loss.backward()

    started = time.perf_counter()
    peak = peak_memory_bytes(forward_backward, device)
    seconds = time.perf_counter() - started
    gradients = sum(p.grad.untyped_storage().nbytes() for p in tuner.parameters
                    if p.grad is not None)
    optimizer.step()
    state = sum(t.untyped_storage().nbytes() for s in optimizer.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return StepMemory(
        latent_side=latent_side, batch_size=config.batch_size,
        guidance_scale=config.guidance_scale,
        gradient_checkpointing=config.gradient_checkpointing, weights=weights,
        trainable=sum(p.untyped_storage().nbytes() for p in tuner.parameters),
        gradients=gradients, optimizer=state, activations=peak - gradients, seconds=seconds)


def extrapolate(a: StepMemory, b: StepMemory, latent_side: int) -> float:
    """Activation bytes at ``latent_side``, linear in the latent area through ``a`` and ``b``."""
    area_a, area_b = a.latent_side**2, b.latent_side**2
    if area_a == area_b:
        raise ValueError("extrapolate(): the two measurements need different latent sides")
    slope = (b.activations - a.activations) / (area_b - area_a)
    return a.activations + (latent_side**2 - area_a) * slope


def memory_table(pairs: dict[str, tuple[StepMemory, StepMemory]], latent_side: int = 96,
                 batches: Sequence[int] = (1, 2)) -> str:
    """Markdown: for each measured setting (name -> two measurements of batch 1), the weights,
    optimizer and activations at ``latent_side`` in fp32 and bf16 (weights of frozen modules in
    the compute dtype, trainables, their gradients and AdamW state fp32), totals per batch size
    (activations x batch) and the GPUs of :data:`GPUS_GB` that fit them."""
    lines = ["| setting | dtype | weights GiB | trainable + grad + AdamW GiB | activations / "
             "sample GiB | " + " | ".join(f"total B={b} GiB (fits)" for b in batches) + " |",
             "|---|---|---|---|---|" + "---|" * len(batches)]
    for name, (a, b) in pairs.items():
        act = extrapolate(a, b, latent_side)
        for dtype, factor in (("fp32", 1.0), ("bf16", 0.5)):
            frozen = (a.weights - a.trainable) * factor
            train = a.trainable + a.gradients + a.optimizer
            per_sample = act * factor
            cells = []
            for batch in batches:
                total = frozen + train + batch * per_sample
                fits = [f"{gb}" for gb in GPUS_GB if total <= gb * 1e9]
                cells.append(f"{total / GIB:.1f} ({', '.join(fits) or 'none'})")
            lines.append(f"| {name} | {dtype} | {frozen / GIB:.2f} | {train / GIB:.3f} | "
                         f"{per_sample / GIB:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SETTINGS = {  # name -> RewardConfig fields (K = 2 trained steps of T = 4, LoRA r 32)
    "checkpointing, CFG 1": {},
    "checkpointing, CFG 3": {"guidance_scale": 3.0},
    "no checkpointing, CFG 1": {"gradient_checkpointing": False},
}


def measure_settings(pipe: MultiViewPipeline, reward: PoseScore, sides: tuple[int, int],
                     settings: dict[str, dict] = SETTINGS, *, lora_rank: int = 32,
                     log=print) -> dict[str, tuple[StepMemory, StepMemory]]:
    """Two measurements (``sides``) per setting, batch 1, T = 4, K = 2, no early stop."""
    base = RewardConfig(num_steps=4, trained_steps=2, early_stop=0, lora_rank=lora_rank)
    pairs = {}
    for name, fields in settings.items():
        config = replace(base, **fields)
        pair = tuple(measure_reward_step(pipe, reward, config, side) for side in sides)
        for m in pair:
            log(f"{name}, latents {m.latent_side}²: activations {m.activations / GIB:.3f} GiB, "
                f"{m.seconds:.1f} s")
        pairs[name] = pair
    return pairs


@command
def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m drpose.train.memory",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--pipeline", required=True, type=Path, help="pipeline folder")
    parser.add_argument("--sides", type=int, nargs=2, default=(16, 32),
                        help="two latent sides to measure (default 16 32: 128 and 256 px)")
    parser.add_argument("--target", type=int, default=96, help="latent side of the table (96: "
                        "PSHuman's 768 px)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the table and the "
                        "measurements here (memory.md, memory.json)")
    args = parser.parse_args(argv)
    pipe = MultiViewPipeline.from_pretrained(args.pipeline).to(args.device)
    torch.manual_seed(0)
    latent_channels = 2 * pipe.vae.config.latent_channels  # [normal | colour]
    net = SkeletonNet(in_channels=latent_channels).to(args.device).eval()
    reward = PoseScore(net)
    pairs = measure_settings(pipe, reward, tuple(args.sides))
    table = memory_table(pairs, args.target)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.md").write_text(table + "\n")
        (args.out / "memory.json").write_text(json.dumps(
            {name: [asdict(m) for m in pair] for name, pair in pairs.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
