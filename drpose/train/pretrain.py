"""Stage ``pretrain``: supervised multi-view diffusion training of :class:`MultiViewUNet`,
PSHuman-style, on multi-view renders.

One sample: the input image (a colour view, :mod:`drpose.data.multiview`) -> the 6 body views x
{normal, colour}. Everything goes through :class:`~drpose.pipelines.multiview.MultiViewPipeline`
so training and inference agree: the condition is ``pipe.encode_condition(image)`` (VAE latent of
the image, noise-augmented CLIP embedding, fixed prompt embeddings), the targets are
``pipe.encode_latents(view)`` in the pipeline's row layout ``[normal | colour]`` x (object, view),
and the model output is ``pipe.unet_step(noisy, t, cond, guidance_scale=1)``.

Objective (PSHuman's): one timestep per object (shared by its views and domains), noise added by
the scheduler; the target is the noise (``prediction_type="epsilon"``) or the velocity
(``"v_prediction"``); per-row MSE weighted by min-SNR (``min(SNR, gamma) / SNR`` for epsilon,
``min(SNR, gamma) / (SNR + 1)`` for v; gamma 5). Condition dropout for classifier-free guidance
as PSHuman: with probability ``condition_dropout`` an object's image latents and class labels
are both zeroed (the unconditional rows of :meth:`MultiViewPipeline.unet_step`). Optional EMA.

CPU default: the tiny UNet **without the face view** (6 views per domain; the 64 px renders have
no face detail worth a view), 64 px images, a VAE trained by :mod:`drpose.train.vae`, a
random-init tiny CLIP vision tower (frozen) and random fixed prompt embeddings, all saved with the
pipeline. On GPUs ``init`` points at a local PSHuman(-like) pipeline folder
(:meth:`MultiViewPipeline.from_pretrained`, PSHuman UNets via ``MultiViewUNet.from_pshuman``) and
the renders must be made at its resolution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
    StableUnCLIPImageNormalizer,
)
from diffusers.training_utils import EMAModel
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from drpose._devices import randn
from drpose.data.multiview import MultiViewRenders, RenderConfig
from drpose.models import MultiViewUNet
from drpose.pipelines.default import (
    DONE_FILE,
    PIPELINE_SUBFOLDER,
    PRETRAIN_RUN_NAME,
    default_chain_dir,
)
from drpose.pipelines.multiview import (
    PSHUMAN_DDIM,
    CLIPImageProcessor,
    MultiViewCondition,
    MultiViewPipeline,
)
from drpose.train import vae as vae_stage
from drpose.train.engine import (
    StepOutput,
    TrainConfig,
    Trainer,
    has_checkpoint,
    stage_device,
    step_generator,
)

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class PretrainConfig:
    """Options of the ``pretrain`` stage.

    renders: render folder (None: the default chain's, built when missing). vae: a VAE folder
    (``save_pretrained``), used when ``init`` is None (None: :func:`find_vae`).
    init: a local pipeline folder to continue (PSHuman's or ours); None builds the tiny model.
    prediction_type: ``"epsilon"`` or ``"v_prediction"`` (tiny model only; a loaded checkpoint
    keeps its own). batch_size: objects per step. snr_gamma: min-SNR gamma (None: unweighted).
    condition_dropout: probability of dropping an object's image latents + class labels.
    ema_decay: EMA of the UNet weights (None: off); the saved UNet is the EMA one when on.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        name=PRETRAIN_RUN_NAME, steps=400, lr=1e-3, checkpoint_every=100, log_every=20))
    renders: str | None = None
    vae: str | None = None
    init: str | None = None
    prediction_type: str = "v_prediction"
    batch_size: int = 2
    snr_gamma: float | None = 5.0
    condition_dropout: float = 0.1
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got "
                             f"{self.prediction_type!r}")


Config = PretrainConfig  # the stage's config for ``python -m drpose.train pretrain``


def tiny_pipeline(vae_folder: str | Path, prediction_type: str, seed: int = 0) -> MultiViewPipeline:
    """The CPU default pipeline: tiny UNet (6 views, no face view) at the VAE's latent size, the
    trained VAE, a random-init 2-layer CLIP vision tower, random fixed prompt embeddings."""
    torch.manual_seed(seed)
    vae = vae_stage.load_vae(vae_folder)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = MultiViewUNet.tiny(face_view=False, face_fusion=False, prediction_type=prediction_type,
                              sample_size=vae.config.sample_size // factor)
    embed_dim = unet.config.projection_class_embeddings_input_dim // 2
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              projection_dim=embed_dim)
    return MultiViewPipeline(
        unet=unet,
        vae=vae,
        image_encoder=CLIPVisionModelWithProjection(vision).eval().requires_grad_(False),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32}),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim).eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        scheduler=DDIMScheduler(**PSHUMAN_DDIM, prediction_type=prediction_type),
        prompt_embeds=torch.randn(2, unet.views_per_object, 8, unet.config.cross_attention_dim),
    )


@dataclass
class EncodedRenders:
    """Frozen-encoder outputs of N objects: ``cond`` rows (object, view) of all objects and
    ``targets`` (N, 2, V, 4, h, w) scaled VAE latents of the [normal, colour] views."""

    cond: MultiViewCondition
    targets: Tensor

    def batch(self, objects: Tensor, views: int) -> tuple[MultiViewCondition, Tensor]:
        """Condition and x0 rows ``(2*B*V, 4, h, w)`` [normal | colour] of ``objects``."""
        rows = (objects[:, None] * views + torch.arange(views)).flatten()
        cond = MultiViewCondition(self.cond.image_latents[rows], self.cond.class_labels[rows],
                                  self.cond.prompt_embeds[:, rows])
        x0 = self.targets[objects].transpose(0, 1).flatten(0, 2)
        return cond, x0


@torch.no_grad()
def encode_renders(pipe: MultiViewPipeline, data: MultiViewRenders,
                   chunk: int = 8) -> EncodedRenders:
    """Condition (``pipe.encode_condition``) and target latents of every object of ``data``."""
    conds, targets = [], []
    for start in range(0, len(data), chunk):
        index = slice(start, start + chunk)
        conds.append(pipe.encode_condition(data.images(index)))
        normals, colours = data.views(index)
        both = torch.stack([normals, colours], dim=1)  # (b, 2, V, 3, R, R)
        latents = pipe.encode_latents(both.flatten(0, 2).to(pipe.device))
        targets.append(latents.unflatten(0, both.shape[:3]))
    cond = MultiViewCondition(torch.cat([c.image_latents for c in conds]),
                              torch.cat([c.class_labels for c in conds]),
                              torch.cat([c.prompt_embeds for c in conds], dim=1))
    return EncodedRenders(cond, torch.cat(targets))


def drop_conditions(cond: MultiViewCondition, keep: Tensor) -> MultiViewCondition:
    """Zero the image latents and class labels of rows where ``keep`` (rows,) is False."""
    image = cond.image_latents * keep[:, None, None, None].to(cond.image_latents)
    labels = cond.class_labels * keep[:, None].to(cond.class_labels)
    return MultiViewCondition(image, labels, cond.prompt_embeds)


def snr_weights(scheduler: DDIMScheduler, timesteps: Tensor, gamma: float | None) -> Tensor:
    """min-SNR loss weights of ``timesteps`` for the scheduler's prediction type (1 if None)."""
    if gamma is None:
        return torch.ones(timesteps.shape, dtype=torch.float32)
    alphas = scheduler.alphas_cumprod[timesteps.cpu()].float()
    snr = alphas / (1 - alphas)
    clipped = snr.clamp(max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_loss(pipe: MultiViewPipeline, cond: MultiViewCondition, x0: Tensor,
                   generator: torch.Generator, *, snr_gamma: float | None,
                   condition_dropout: float) -> tuple[Tensor, dict[str, float]]:
    """PSHuman's objective for B objects: ``x0`` rows (2*B*V, 4, h, w) [normal | colour]."""
    views = pipe.views
    objects = cond.rows // views
    scheduler = pipe.scheduler
    t = torch.randint(0, scheduler.config.num_train_timesteps, (objects,), generator=generator)
    t_rows = t[None, :, None].expand(2, objects, views).flatten()
    keep = torch.rand(objects, generator=generator) >= condition_dropout
    cond = drop_conditions(cond, keep[:, None].expand(objects, views).flatten())
    noise = randn(x0.shape, generator, x0.device, x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t_rows)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t_rows)
    else:
        target = noise
    output = pipe.unet_step(noisy, t_rows.to(pipe.device), cond, guidance_scale=1.0)
    per_row = (output.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    weights = snr_weights(scheduler, t_rows, snr_gamma).to(per_row)
    loss = (weights * per_row).mean()
    return loss, {"mse": float(per_row.mean())}


@torch.no_grad()
def evaluate(pipe: MultiViewPipeline, encoded: EncodedRenders, seed: int = 1234) -> float:
    """Mean unweighted denoising MSE over held-out objects at fixed random timesteps/noise."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(encoded.targets.shape[0]):
        cond, x0 = encoded.batch(torch.tensor([i]), pipe.views)
        _, metrics = diffusion_loss(pipe, cond, x0, generator, snr_gamma=None,
                                    condition_dropout=0.0)
        losses.append(metrics["mse"])
    return sum(losses) / max(len(losses), 1)


def run(config: PretrainConfig, *, resume: bool = False) -> Path:
    """Train; returns the saved pipeline folder ``<run_dir>/pipeline``."""
    data = MultiViewRenders.load(config.renders or vae_stage.default_renders())
    if config.init is not None:
        pipe = MultiViewPipeline.from_pretrained(config.init)
    else:
        pipe = tiny_pipeline(find_vae(config.vae, config.train.runs_dir), config.prediction_type,
                             config.train.seed)
    for module in (pipe.vae, pipe.image_encoder, pipe.image_normalizer):
        module.requires_grad_(False)
    device = stage_device(config.train)
    pipe.to(device)
    unet = pipe.unet.train().requires_grad_(True)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay) if config.ema_decay else None
    trainer = Trainer(config.train, unet)
    trainer.begin(resume)
    train = encode_renders(pipe, data.subset("train"))
    held = encode_renders(pipe, data.subset("eval"))
    count = train.targets.shape[0]

    def step(index: int) -> StepOutput:
        if ema is not None and index > 0 and index % config.train.grad_accum == 0:
            ema.step(unet.parameters())  # the weights after the previous optimizer step
        generator = step_generator(config.train.seed, index)
        objects = torch.randint(count, (config.batch_size,), generator=generator)
        cond, x0 = train.batch(objects, pipe.views)
        loss, metrics = diffusion_loss(pipe, cond, x0, generator, snr_gamma=config.snr_gamma,
                                       condition_dropout=config.condition_dropout)
        return StepOutput(loss, metrics)

    last = trainer.fit(step)
    trainer.close()
    if ema is not None:
        ema.step(unet.parameters())
        ema.copy_to(unet.parameters())
    pipe.unet = unet.eval()
    out = config.train.run_dir / PIPELINE_SUBFOLDER
    pipe.save_pretrained(out)
    metrics = {"eval_mse": evaluate(pipe, held), **last}
    (config.train.run_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "config": asdict(config)}, indent=1, default=str))
    print(f"pretrain: held-out diffusion MSE {metrics['eval_mse']:.4f} after {trainer.step} "
          f"steps ({out})")
    return out


def find_vae(vae: str | None, runs_dir: str | Path) -> Path:
    """The VAE folder a stage uses: ``vae`` when given; else the ``vae`` stage's default output
    under ``runs_dir`` (``<runs_dir>/vae/vae``, what ``python -m drpose.train vae`` writes) when
    it is there; else the default chain's VAE (built when missing, as the reward stage does)."""
    if vae is not None:
        return Path(vae)
    default = vae_stage.VAEConfig()
    default.train.runs_dir = str(runs_dir)
    trained = default.train.run_dir / vae_stage.VAE_SUBFOLDER
    if (trained / "config.json").is_file():
        return trained
    return ensure_vae(default_chain_dir())


# -- the default chain ---------------------------------------------------------------------------


def _mark_done(folder: Path, info: dict) -> None:
    (folder / DONE_FILE).write_text(json.dumps(info, indent=1, default=str))


def _is_done(folder: Path) -> bool:
    return (folder / DONE_FILE).is_file()


def default_configs(cache_dir: str | Path) -> tuple[RenderConfig, vae_stage.VAEConfig,
                                                    PretrainConfig]:
    """The CPU default stage configs, all writing under ``cache_dir``."""
    cache = Path(cache_dir)
    renders = str(cache / "renders")
    vae = vae_stage.VAEConfig(renders=renders)
    vae.train.runs_dir = str(cache)
    pretrain = PretrainConfig(renders=renders, vae=str(cache / "vae" / vae_stage.VAE_SUBFOLDER))
    pretrain.train.runs_dir = str(cache)
    return RenderConfig(), vae, pretrain


def ensure_renders(cache_dir: str | Path) -> Path:
    """The default renders under ``cache_dir/renders`` (built when missing)."""
    return vae_stage.default_renders(cache_dir)


def ensure_vae(cache_dir: str | Path) -> Path:
    """The default VAE folder under ``cache_dir`` (renders and VAE built when missing)."""
    _, vae_config, _ = default_configs(cache_dir)
    out = vae_config.train.run_dir / vae_stage.VAE_SUBFOLDER
    if not _is_done(out):
        ensure_renders(cache_dir)
        # an interrupted build goes on from its checkpoint
        out = vae_stage.run(vae_config, resume=has_checkpoint(vae_config.train.run_dir))
        _mark_done(out, {"stage": "vae"})
    return out


def ensure_default(cache_dir: str | Path) -> Path:
    """The pretrained default pipeline folder (renders -> VAE -> pretrain, each built and cached
    under ``cache_dir`` when missing); load it with ``MultiViewPipeline.from_pretrained``."""
    _, _, config = default_configs(cache_dir)
    out = config.train.run_dir / PIPELINE_SUBFOLDER
    if not _is_done(out):
        ensure_vae(cache_dir)
        out = run(config, resume=has_checkpoint(config.train.run_dir))
        _mark_done(out, {"stage": "pretrain"})
    return out
