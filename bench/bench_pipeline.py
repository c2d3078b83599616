"""MultiViewPipeline with the tiny components on CPU: time and peak tensor memory per sample.

One sample = one 32x32 input image -> 7 views x {normal, colour} (latents 4x16x16), PSHuman's
inference settings (classifier-free guidance 3.0, so 28 UNet rows per step; DDIM eta 1.0) but 2
steps instead of 40 to keep the suite short: the denoising cost is linear in the steps, so the
``unet_step`` group gives the per-step number to scale by. The decode group shows what chunked
VAE decoding buys: the baseline decodes all 14 images at once (what PSHuman does).
"""

from __future__ import annotations

import pytest
import torch

from drpose.pipelines import MultiViewPipeline

SIDE = 32
STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> MultiViewPipeline:
    return MultiViewPipeline.tiny(seed=0)


def image() -> torch.Tensor:
    return torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("chunk", [14, 2])
def bench_pipeline_per_sample(measure, pipe, chunk):
    x = image()

    def run():
        pipe(
            x,
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0),
            decode_chunk_size=chunk,
        )

    measure(
        run,
        group=f"pipeline tiny 1 sample, {STEPS} steps, CFG",
        rounds=3,
        label=f"decode chunk {chunk}" + (" (all at once)" if chunk == 14 else ""),
        baseline=chunk == 14,
    )


def bench_unet_step(measure, pipe):
    with torch.no_grad():
        cond = pipe.encode_condition(image())
        latents = pipe.prepare_latents(cond, torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            pipe.unet_step(latents, torch.tensor(500), cond, guidance_scale=3.0)

    measure(
        run, group="pipeline tiny: one guided UNet step (28 rows)", label="unet_step", baseline=True
    )


@pytest.mark.parametrize("chunk", [14, 2, 1])
def bench_decode(measure, pipe, chunk):
    latents = torch.randn(14, 4, SIDE // 2, SIDE // 2, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            pipe.decode(latents, chunk_size=chunk)

    measure(
        run,
        group="pipeline tiny: VAE decode of 14 views",
        label=f"chunk {chunk}",
        baseline=chunk == 14,
    )
