"""Stage ``vae``: a tiny ``diffusers.AutoencoderKL`` trained on the multi-view renders.

There is no pretrained VAE on this machine, so the CPU default trains one (factor 4: 64 px
images -> 16 x 16 x 4 latents) on every normal and colour view of the training poses, so that
latents carry the images' content. Loss: ``L1 + MSE`` of the reconstruction (images in [-1, 1])
plus ``kl_weight`` times the mean KL of the posterior to N(0, 1). After training the config's
``scaling_factor`` is set to 1 / std of the latent modes (as Stable Diffusion's 0.18215 was
chosen), so scaled latents have unit variance for the diffusion model. Saved with
``save_pretrained`` to ``<run_dir>/vae`` (``runs/vae/vae`` on the defaults, where the
``pretrain`` and ``skel`` stages look for it first).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from drpose._devices import randn
from drpose._files import make_readable
from drpose.data.multiview import MultiViewRenders, RenderConfig, load_or_build
from drpose.pipelines.default import default_chain_dir
from drpose.train.engine import StepOutput, TrainConfig, Trainer, stage_device, step_generator

VAE_SUBFOLDER = "vae"


@dataclass
class VAEConfig:
    """Options of the ``vae`` stage.

    renders: folder of :mod:`drpose.data.multiview` renders (None: the default chain's, built
    when missing, as the reward stage does: :func:`default_renders`). batch_size: images per step.
    kl_weight: weight of the mean KL term. block_out_channels: the encoder's widths (one 2x
    downsampling between consecutive levels: 3 levels = factor 4). latent_channels: 4 (PSHuman).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        name="vae", steps=300, lr=1e-3, checkpoint_every=100, log_every=20))
    renders: str | None = None
    batch_size: int = 8
    kl_weight: float = 1e-4
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4


Config = VAEConfig  # the stage's config for ``python -m drpose.train vae``


def default_renders(cache_dir: str | Path | None = None) -> Path:
    """``<cache_dir>/renders`` (the default chain's folder when ``cache_dir`` is None): the
    default :class:`RenderConfig` renders, built when missing."""
    folder = Path(cache_dir if cache_dir is not None else default_chain_dir()) / "renders"
    load_or_build(folder, RenderConfig())
    return folder


def tiny_vae(config: VAEConfig, resolution: int) -> AutoencoderKL:
    """A random-init ``AutoencoderKL`` of ``config``'s widths (one layer per block)."""
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=1,
        latent_channels=config.latent_channels, norm_num_groups=8, sample_size=resolution,
    )


def all_views(data: MultiViewRenders) -> Tensor:
    """Every normal and colour view of ``data``: ``(N * V * 2, 3, R, R)`` uint8, in memory (the
    tiny VAE's renders: 64 px)."""
    return torch.cat([data.normals[:], data.colours[:]], dim=1).flatten(0, 1)


def reconstruction_loss(vae: AutoencoderKL, images: Tensor, generator: torch.Generator,
                        kl_weight: float) -> tuple[Tensor, dict[str, float]]:
    """Loss of ``images`` (M, 3, R, R) in [0, 1]: L1 + MSE in [-1, 1] + kl_weight * mean KL."""
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    noise = randn(posterior.mean.shape, generator, x.device, x.dtype)
    z = posterior.mean + posterior.std * noise
    recon = vae.decode(z).sample
    l1 = (recon - x).abs().mean()
    mse = F.mse_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()
    metrics = {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}
    return l1 + mse + kl_weight * kl, metrics


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: Tensor, batch: int = 64) -> float:
    """1 / std of the posterior modes of ``images`` (M, 3, R, R) in [0, 1] (encoded on the
    VAE's device, ``batch`` at a time)."""
    modes = [vae.encode(chunk.to(vae.device) * 2 - 1).latent_dist.mode()
             for chunk in images.split(batch)]
    return float(1.0 / torch.cat(modes).std())


def run(config: VAEConfig, *, resume: bool = False) -> Path:
    """Train the VAE; returns the folder written by ``save_pretrained`` (``<run_dir>/vae``)."""
    data = MultiViewRenders.load(config.renders or default_renders())
    train_images = all_views(data.subset("train"))
    vae = tiny_vae(config, data.config.resolution).to(stage_device(config.train))
    trainer = Trainer(config.train, vae)
    trainer.begin(resume)

    def step(index: int) -> StepOutput:
        generator = step_generator(config.train.seed, index)
        picks = torch.randint(len(train_images), (config.batch_size,), generator=generator)
        images = train_images[picks].to(trainer.device).float() / 255
        loss, metrics = reconstruction_loss(vae, images, generator,
                                            config.kl_weight)
        return StepOutput(loss, metrics)

    last = trainer.fit(step)
    trainer.close()
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scale(vae, train_images.float() / 255))
    held = all_views(data.subset("eval")).to(trainer.device).float() / 255
    with torch.no_grad():
        recon = vae.decode(vae.encode(held * 2 - 1).latent_dist.mode()).sample
    psnr = float(-10 * torch.log10(F.mse_loss(recon.clamp(-1, 1) / 2 + 0.5, held)))
    out = config.train.run_dir / VAE_SUBFOLDER
    vae.save_pretrained(out)
    make_readable(out)
    metrics = {"eval_psnr": psnr, "scaling_factor": vae.config.scaling_factor, **last}
    (config.train.run_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "config": asdict(config)}, indent=1, default=str))
    print(f"vae: held-out reconstruction PSNR {psnr:.2f} dB after {trainer.step} steps, "
          f"scaling factor {vae.config.scaling_factor:.4f} ({out})")
    return out


def load_vae(folder: str | Path) -> AutoencoderKL:
    """A VAE written by :func:`run` (local files only), in eval mode, frozen."""
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()
    return vae.requires_grad_(False)
