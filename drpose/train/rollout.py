"""The DRTune-style DDIM rollout that reward fine-tuning backpropagates through.

For T sampling steps t_0 > t_1 > ... > t_{T-1} (DDIM, from pure noise):

* a random early stop skips the last ``s ~ U{0..m}`` steps: the rollout runs steps 0..e with
  e = T - 1 - s, and x0 is the scheduler's prediction at step e;
* K of the executed steps keep gradients, evenly spaced with a random offset
  (spacing (e + 1) / K, offset ~ U[0, spacing)); at those steps the UNet input is detached
  (stop-gradient) and the UNet runs with a graph (and gradient checkpointing);
* every other step evaluates the UNet without a graph, but the DDIM update
  x_{i+1} = a_i x_i + b_i eps_i stays differentiable in x_i, so the reward's gradient reaches each
  trained step through the cheap linear chain, never through an untrained UNet call.

At each trained step the KL regulariser compares the trained model's output with the reference
model's (LoRA adapters disabled, or a frozen copy): kl = mean over trained steps of
MSE(eps_w, eps_w0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from drpose.pipelines.multiview import MultiViewCondition, MultiViewPipeline

# (latents, t, cond) -> model output; used for the KL reference model
ModelStep = Callable[[Tensor, Tensor, MultiViewCondition], Tensor]


@dataclass(frozen=True)
class RolloutPlan:
    """Which steps run (0..stop) and which of them keep gradients."""

    stop: int
    trained: tuple[int, ...]


def plan_rollout(num_steps: int, trained_steps: int, early_stop: int,
                 generator: torch.Generator) -> RolloutPlan:
    """Draw the early stop and the trained steps (see the module docstring)."""
    if not 1 <= trained_steps <= num_steps - early_stop:
        raise ValueError(f"need 1 <= trained_steps ({trained_steps}) <= num_steps - early_stop "
                         f"({num_steps} - {early_stop})")
    skip = int(torch.randint(0, early_stop + 1, (), generator=generator))
    stop = num_steps - 1 - skip
    spacing = (stop + 1) / trained_steps
    offset = float(torch.rand((), generator=generator)) * spacing
    trained = tuple(min(stop, int(offset + k * spacing)) for k in range(trained_steps))
    return RolloutPlan(stop, trained)


@dataclass
class RolloutResult:
    x0: Tensor          # (2*B*V, 4, h, w) predicted clean latents at the stop step, with graph
    kl: Tensor          # scalar: mean MSE(eps_w, eps_w0) over trained steps (0 without reference)


def rollout(pipe: MultiViewPipeline, cond: MultiViewCondition, plan: RolloutPlan, *,
            num_steps: int, guidance_scale: float, eta: float, generator: torch.Generator,
            reference_step: ModelStep | None = None,
            stop_gradient: bool = True) -> RolloutResult:
    """Run the planned rollout; returns x0 (differentiable through the trained steps) and KL.

    ``stop_gradient=False`` keeps the UNet input's graph too (plain backpropagation through
    every trained step; with all steps trained, the full-rollout baseline DRTune improves on).
    """
    pipe.scheduler.set_timesteps(num_steps, device=pipe.device)
    latents = pipe.prepare_latents(cond, generator)
    kl_terms: list[Tensor] = []
    x0 = latents
    for index, t in enumerate(pipe.scheduler.timesteps[: plan.stop + 1]):
        model_input = latents.detach() if stop_gradient else latents
        if index in plan.trained:
            output = pipe.unet_step(model_input, t, cond, guidance_scale)
            if reference_step is not None:
                with torch.no_grad():
                    reference = reference_step(model_input, t, cond)
                kl_terms.append(torch.mean((output.float() - reference.float()) ** 2))
        else:
            with torch.no_grad():
                output = pipe.unet_step(model_input, t, cond, guidance_scale)
        step = pipe.scheduler.step(output, t, latents, eta=eta, generator=generator)
        latents, x0 = step.prev_sample, step.pred_original_sample
    kl = torch.stack(kl_terms).mean() if kl_terms else latents.new_zeros(())
    return RolloutResult(x0=x0, kl=kl)


@torch.no_grad()
def sample(pipe: MultiViewPipeline, cond: MultiViewCondition, *, num_steps: int,
           guidance_scale: float, eta: float, generator: torch.Generator) -> Tensor:
    """A full rollout without gradients (evaluation): the final latents (2*B*V, 4, h, w)."""
    plan = RolloutPlan(stop=num_steps - 1, trained=())
    return rollout(pipe, cond, plan, num_steps=num_steps, guidance_scale=guidance_scale,
                   eta=eta, generator=generator).x0
