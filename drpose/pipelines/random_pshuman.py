"""A random-initialised, PSHuman-shaped pipeline folder, for sizing runs without the weights.

    python -m drpose.pipelines.random_pshuman --out DIR [--small] [--image-side 768]
        [--dtype float16] [--vision vit-h|narrow] [--seed 0]

writes what :meth:`~drpose.pipelines.multiview.MultiViewPipeline.from_pretrained` reads, laid out
as PSHuman's checkpoint repository (``pengHTYX/PSHuman_Unclip_768_6views``), so that loading goes
through the same code as the real download (``MultiViewUNet.from_pshuman``):

* ``unet/``: PSHuman's ``config.json`` and weights: the full-size UNet of PSHuman's config
  (:data:`drpose.models.configs.PSHUMAN`, 919,783,684 parameters, 7 views, face fusion, 8 input
  channels, cross-attention 1024, class embedding 2048 = 2 x the CLIP image embedding);
* ``vae/``: SD 2.1's ``AutoencoderKL`` shape (widths 128-256-512-512, 2 layers per block, 4
  latent channels, factor 8, scaling factor 0.18215; 83.7 M parameters);
* ``image_encoder/``, ``feature_extractor/``: a ``CLIPVisionModelWithProjection`` whose
  projection (1024) fits the UNet's class embedding: OpenCLIP ViT-H/14's shape (``vision="vit-h"``,
  632 M parameters) or a narrow 2-layer tower with the same projection (``"narrow"``), and the
  224 px OpenAI-CLIP preprocessing;
* ``image_normalizer/`` (unCLIP, 1024), ``image_noising_scheduler/`` (DDPM, squaredcos_cap_v2),
  ``scheduler/``: PSHuman's DDIM (:data:`drpose.models.configs.PSHUMAN_SCHEDULER`);
* ``prompt_embeds/``: random ``normal_embeds.pt`` / ``clr_embeds.pt``, each ``(7, 77, 1024)``.

``image_side`` (default 768) sets the UNet's ``sample_size`` (image side / 8), i.e. the image
side the folder declares (the ``skel`` stage checks renders against it); the weights do not
depend on it. ``small=True`` keeps every structural choice (4 UNet levels, 2 layers per block,
16 multi-view transformer blocks, 7 views with face fusion, 77 prompt tokens, factor-8 VAE, the
CLIP preprocessing) with narrow widths: UNet 32-64-64-64, cross-attention 64, CLIP projection 32,
VAE 32-32-64-64; a reward step at 64 px takes seconds on the CPU (CI). The weights are random:
outputs are noise, only sizes, shapes, memory and time mean anything.

Components are built, saved and freed one at a time, so the full-size folder is written with
about the UNet's float32 size (3.7 GB) of memory.
"""

from __future__ import annotations

from drpose._cli import UsageError, apply_openmp_wait_policy, command

if __name__ == "__main__":  # decided before torch loads OpenMP
    apply_openmp_wait_policy()

import argparse
import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
    StableUnCLIPImageNormalizer,
)
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from drpose._files import make_readable
from drpose.models import MultiViewUNet, configs
from drpose.models.mv_unet import as_dtype
from drpose.pipelines.multiview import PROMPT_EMBED_FILES, CLIPImageProcessor

VAE_FACTOR = 8  # SD 2.1's VAE: 4 levels, 3 downsamplings
PROMPT_TOKENS = 77  # CLIP text encoder's sequence length (PSHuman's fixed prompt embeddings)
VISIONS = ("vit-h", "narrow")

# UNet width overrides of the small variant (everything else is PSHuman's).
SMALL_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64, 64, 64),
    "attention_head_dim": (2, 4, 4, 4),
    "cross_attention_dim": 64,
    "projection_class_embeddings_input_dim": 64,  # 2 x the small CLIP projection
}
SD21_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
SMALL_VAE: dict[str, Any] = {"block_out_channels": (32, 32, 64, 64)}
# OpenCLIP ViT-H/14 as SD 2.1 unCLIP's image encoder (pshuman_scheduler_and_pipeline.json).
VIT_H: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
NARROW_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def unet_config(small: bool = False, image_side: int = 768) -> dict[str, Any]:
    """``MultiViewUNet`` keyword arguments of the random pipeline (prediction type of
    :data:`configs.PSHUMAN_SCHEDULER`)."""
    if image_side <= 0 or image_side % (VAE_FACTOR * 8):
        raise ValueError(f"image_side must be a positive multiple of {VAE_FACTOR * 8} (VAE factor "
                         f"8 x the UNet's 3 downsamplings), got {image_side}")
    return {**configs.PSHUMAN, **(SMALL_UNET if small else {}),
            "sample_size": image_side // VAE_FACTOR,
            "prediction_type": configs.PSHUMAN_SCHEDULER["prediction_type"]}


def vision_config(small: bool = False, vision: str = "vit-h") -> CLIPVisionConfig:
    """The image encoder's config: projection = half the UNet's class-embedding input."""
    if vision not in VISIONS:
        raise ValueError(f"vision must be one of {VISIONS}, got {vision!r}")
    values = {**VIT_H, **(NARROW_VISION if small or vision == "narrow" else {})}
    if small:
        values["projection_dim"] = SMALL_UNET["projection_class_embeddings_input_dim"] // 2
    return CLIPVisionConfig(**values)


def write_random_pshuman(out: str | Path, *, small: bool = False, image_side: int | None = None,
                         dtype: torch.dtype | str = torch.float16, vision: str = "vit-h",
                         seed: int = 0) -> Path:
    """Write the random PSHuman-shaped pipeline folder (module docstring) to ``out``.

    Args:
        out: the folder (created; existing component folders are overwritten).
        small: narrow widths, same structure (CI).
        image_side: image side in pixels the folder declares (default 768; small: 64).
        dtype: the files' dtype (PSHuman's release is float16; ``from_pretrained`` loads float32
            unless told otherwise).
        vision: ``"vit-h"`` (ViT-H/14's shape) or ``"narrow"`` (same projection); small is
            always narrow.
        seed: the random initialisation.

    Returns:
        ``out`` as a Path.
    """
    dtype = as_dtype(dtype)
    side = image_side or (64 if small else 768)
    unet_kwargs = unet_config(small, side)
    vision_cfg = vision_config(small, vision)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    unet = MultiViewUNet(**unet_kwargs).to(dtype)
    unet.save_pshuman(root)
    views, cross = unet.views_per_object, unet.config.cross_attention_dim
    del unet
    gc.collect()

    vae_kwargs = {**SD21_VAE, **(SMALL_VAE if small else {}), "sample_size": side}
    AutoencoderKL(**vae_kwargs).to(dtype).save_pretrained(root / "vae")

    CLIPVisionModelWithProjection(vision_cfg).to(dtype).save_pretrained(root / "image_encoder")
    gc.collect()
    CLIPImageProcessor(size={"shortest_edge": vision_cfg.image_size},
                       crop_size={"height": vision_cfg.image_size,
                                  "width": vision_cfg.image_size}
                       ).save_pretrained(root / "feature_extractor")
    StableUnCLIPImageNormalizer(embedding_dim=vision_cfg.projection_dim).to(dtype).save_pretrained(
        root / "image_normalizer")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(
        root / "image_noising_scheduler")
    DDIMScheduler(**configs.PSHUMAN_SCHEDULER).save_pretrained(root / "scheduler")

    embeds = root / "prompt_embeds"
    embeds.mkdir(exist_ok=True)
    for name in PROMPT_EMBED_FILES:
        torch.save(torch.randn(views, PROMPT_TOKENS, cross).to(dtype), embeds / name)
    (root / "random_pshuman.json").write_text(json.dumps(
        {"small": small, "image_side": side, "dtype": str(dtype).removeprefix("torch."),
         "vision": "narrow" if small else vision, "seed": seed}, indent=1))
    make_readable(root)
    return root


@command
def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m drpose.pipelines.random_pshuman",
                                     description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="pipeline folder to write")
    parser.add_argument("--small", action="store_true",
                        help="narrow widths, PSHuman's structure (CI: seconds on the CPU)")
    parser.add_argument("--image-side", type=int, default=None,
                        help="image side in pixels (default 768; --small: 64)")
    parser.add_argument("--dtype", default="float16", help="dtype of the files (float16 as "
                        "PSHuman's release, bfloat16, float32)")
    parser.add_argument("--vision", choices=VISIONS, default="vit-h",
                        help="image encoder: ViT-H/14's shape or a narrow tower (same projection)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    out = write_random_pshuman(args.out, small=args.small, image_side=args.image_side,
                               dtype=args.dtype, vision=args.vision, seed=args.seed)
    print(f"wrote {'small ' if args.small else ''}random PSHuman-shaped pipeline to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
