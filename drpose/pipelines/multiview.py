"""``MultiViewPipeline``: one image -> 6 body views (+ face view) x {normal, colour}, as PSHuman.

Conditioning (``../shared/reference/pshuman_scheduler_and_pipeline.json``, ``image_conditioning``):

* every view's UNet input is ``[noisy latent (4) | VAE latent of the condition image (4)
  (| VAE latent of that view's SMPL-X condition map (4), 12-channel variant)]``; the condition
  image is the input image for the body views and its top-centre crop, upscaled, for the face view;
  latents are ``vae.encode(2x - 1).latent_dist.mode() * scaling_factor``;
* the CLIP image embedding of the same per-view image, noise-augmented at ``noise_level`` (PSHuman:
  0) with the unCLIP normaliser and noising scheduler, concatenated with the noise level's
  sinusoidal embedding, goes to the UNet's ``class_labels``;
* fixed prompt embeddings ``(2 domains, V views, S, D)`` (PSHuman's ``normal_embeds.pt`` /
  ``clr_embeds.pt``) select the domain and view through cross-attention;
* classifier-free guidance: the unconditional rows have zero image latents and zero class labels
  but the same prompt embeddings; rows are ``[uncond-normal | cond-normal | uncond-colour |
  cond-colour]``, each ``objects x views`` with view fastest, as PSHuman's UNet expects.

Denoising: DDIM (PSHuman: linear betas 0.00085-0.012 over 1000 steps, 40 steps, eta 1.0,
guidance 3.0). The loop is exposed step by step for the reward-training loop::

    with torch.no_grad():
        cond = pipe.encode_condition(image)                   # once per image (VAE + CLIP)
    latents = pipe.prepare_latents(cond, generator)           # (2*B*V, 4, h, w), [normal | colour]
    pipe.scheduler.set_timesteps(steps)
    for t in pipe.scheduler.timesteps:
        model_output = pipe.unet_step(latents, t, cond, guidance_scale)   # differentiable
        step = pipe.scheduler.step(model_output, t, latents, eta=eta, generator=generator)
        latents = step.prev_sample                            # step.pred_original_sample = x0
    images = pipe.decode(latents, chunk_size=2)               # chunked VAE decode

Outputs keep PSHuman's conventions: views in the rig's order, the back (3) and left (4) views
horizontally mirrored, normal maps in the front camera's frame, values in [0, 1].
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
    StableUnCLIPImageNormalizer,
)
from PIL import Image
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from drpose._devices import randn
from drpose._files import make_readable
from drpose.models import MultiViewUNet, configs
from drpose.models.mv_unet import as_dtype

try:  # transformers >= 5 without torchvision: the PIL-backed processor (same settings)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor

# PSHuman's inference scheduler minus prediction_type, which comes from the checkpoint.
PSHUMAN_DDIM = {k: v for k, v in configs.PSHUMAN_SCHEDULER.items() if k != "prediction_type"}
PROMPT_EMBED_FILES = ("normal_embeds.pt", "clr_embeds.pt")  # PSHuman's fixed_prompt_embeds_7view
PSHUMAN_PROMPT_EMBEDS = Path("mvdiffusion/data/fixed_prompt_embeds_7view")  # in PSHuman's code
SCHEDULER_CONFIG = "scheduler_config.json"
# component -> (its config file, a glob of its weights or None): what from_pretrained reads.
COMPONENTS: dict[str, tuple[str, str | None]] = {
    "unet": ("config.json", "diffusion_pytorch_model*"),
    "vae": ("config.json", "diffusion_pytorch_model*"),
    "image_encoder": ("config.json", "*model*"),
    "feature_extractor": ("preprocessor_config.json", None),
    "image_normalizer": ("config.json", "diffusion_pytorch_model*"),
    "image_noising_scheduler": (SCHEDULER_CONFIG, None),
    "scheduler": (SCHEDULER_CONFIG, None),
}


@dataclass
class MultiViewCondition:
    """Everything the UNet is conditioned on, for B objects of V views (rows (object, view)).

    Attributes:
        image_latents: ``(B*V, 4 or 8, h, w)``: VAE latents of each view's condition image
            (| SMPL-X map), scaled by the VAE's scaling factor.
        class_labels: ``(B*V, 2E)``: noise-augmented CLIP image embedding | noise-level embedding.
        prompt_embeds: ``(2, B*V, S, D)``: per domain (normal, colour) and row.
    """

    image_latents: Tensor
    class_labels: Tensor
    prompt_embeds: Tensor

    @property
    def rows(self) -> int:
        return self.image_latents.shape[0]


@dataclass
class ImageEncodings:
    """The costly, deterministic part of a condition (what :meth:`MultiViewPipeline.
    encode_images` computes; ``drpose.train.conditions`` caches it), for B objects of n = 1
    condition image (2 with a face view: the image and its face crop).

    Attributes:
        latents: ``(B, n, 4, h, w)``: VAE latents (``mode() * scaling_factor``).
        embeds: ``(B, n, E)``: CLIP image embeddings (before unCLIP noise augmentation).
    """

    latents: Tensor
    embeds: Tensor


@dataclass
class MultiViewOutput:
    """Generated views of B objects; V = body views (+1 face view, last).

    Attributes:
        normals, colours: ``(B, V, 3, H, W)`` float in [0, 1] (None when not decoded).
        normal_latents, colour_latents: ``(B, V, 4, h, w)`` final latents (unscaled VAE space
            times the scaling factor, as the UNet sees them).
    """

    normals: Tensor | None
    colours: Tensor | None
    normal_latents: Tensor
    colour_latents: Tensor


class MultiViewPipeline:
    """Image-to-multi-view pipeline around :class:`drpose.models.MultiViewUNet`.

    Args:
        unet: the multi-view UNet; its config gives the views and the input channels.
        vae: ``AutoencoderKL`` (SD 2.1's in PSHuman).
        image_encoder: ``CLIPVisionModelWithProjection``; ``image_embeds`` of size E.
        feature_extractor: ``CLIPImageProcessor`` (its crop size, mean and std are used).
        image_normalizer: unCLIP's ``StableUnCLIPImageNormalizer`` (embedding dim E).
        image_noising_scheduler: unCLIP's ``DDPMScheduler`` for the embedding noise augmentation.
        scheduler: the denoising scheduler (DDIM); its ``prediction_type`` must agree with the
            UNet's when the UNet knows it.
        prompt_embeds: ``(2, V, S, D)`` fixed prompt embeddings, [normal, colour] x views.
    """

    def __init__(
        self,
        unet: MultiViewUNet,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessor,
        image_normalizer: StableUnCLIPImageNormalizer,
        image_noising_scheduler: DDPMScheduler,
        scheduler: DDIMScheduler,
        prompt_embeds: Tensor,
    ) -> None:
        views = unet.views_per_object
        if prompt_embeds.dim() != 4 or prompt_embeds.shape[0] != 2:
            raise ValueError(
                f"prompt_embeds must be (2 domains, V, S, D), got {tuple(prompt_embeds.shape)}"
            )
        if prompt_embeds.shape[1] < views:
            raise ValueError(
                f"prompt_embeds has {prompt_embeds.shape[1]} views, the UNet needs {views}"
            )
        if prompt_embeds.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(
                f"prompt_embeds last dim {prompt_embeds.shape[-1]} != UNet cross_attention_dim "
                f"{unet.config.cross_attention_dim}"
            )
        known = unet.config.prediction_type
        if known is not None and scheduler.config.prediction_type != known:
            raise ValueError(
                f"scheduler prediction_type {scheduler.config.prediction_type!r} != the UNet's "
                f"{known!r} (read from its checkpoint)"
            )
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.image_normalizer = image_normalizer
        self.image_noising_scheduler = image_noising_scheduler
        self.scheduler = scheduler
        # PSHuman's files hold 7 views (6 body + face); without a face view the first 6 are used.
        self.prompt_embeds = prompt_embeds[:, :views]

    # -- properties ------------------------------------------------------------------------------

    @property
    def views(self) -> int:
        """Views per object and domain (body views + face view when the UNet has one)."""
        return self.unet.views_per_object

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_side(self) -> int:
        """Side (pixels) of the square images it takes and generates."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every component (and the prompt embeddings) to ``device`` / ``dtype``."""
        for module in (self.unet, self.vae, self.image_encoder):
            module.to(device=device, dtype=dtype)
        # unCLIP's normaliser overrides ``to`` with (torch_device, torch_dtype) and breaks on None
        nn.Module.to(self.image_normalizer, device=device, dtype=dtype)
        self.prompt_embeds = self.prompt_embeds.to(device=device, dtype=dtype)
        return self

    # -- conditioning ----------------------------------------------------------------------------

    def view_images(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> the distinct condition images ``(B, 1 or 2, 3, H, W)``:
        the image (all body views) and, with a face view, its face crop (PSHuman: box
        x in [W/3, 2W/3), y in [0, H/3) of the square image, upscaled bicubically to H x W)."""
        if not self.unet.config.face_view:
            return image[:, None]
        return torch.stack([image, face_crop(image)], dim=1)

    def expand_views(self, per_image: Tensor) -> Tensor:
        """``(B, 1 or 2, ...)`` per distinct image -> ``(B*V, ...)`` rows (object, view)."""
        body = self.unet.config.num_body_views
        index = torch.tensor([0] * body + [1] * (self.views - body), device=per_image.device)
        return per_image.index_select(1, index).flatten(0, 1)

    def encode_latents(self, images: Tensor) -> Tensor:
        """VAE latents of ``(M, 3, H, W)`` images in [0, 1]: ``mode() * scaling_factor``."""
        posterior = self.vae.encode((2 * images - 1).to(self.vae.dtype)).latent_dist
        return posterior.mode() * self.vae.config.scaling_factor

    def clip_pixels(self, images: Tensor) -> Tensor:
        """CLIP preprocessing of ``(M, 3, H, W)`` in [0, 1] in torch (PSHuman's training path):
        bicubic resize to the processor's crop size, normalise with its mean/std."""
        crop = self.feature_extractor.crop_size
        if isinstance(crop, int):
            size = (crop, crop)
        elif isinstance(crop, dict):
            size = (crop["height"], crop["width"])
        else:
            size = (crop.height, crop.width)
        pixels = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        mean = torch.tensor(self.feature_extractor.image_mean, device=images.device)
        std = torch.tensor(self.feature_extractor.image_std, device=images.device)
        return ((pixels.clamp(0, 1) - mean[:, None, None]) / std[:, None, None]).to(
            self.image_encoder.dtype
        )

    def noise_image_embeddings(
        self, embeds: Tensor, noise_level: int, generator: torch.Generator | None
    ) -> Tensor:
        """unCLIP noise augmentation: ``(M, E) -> (M, 2E)`` = noised embedding | level embedding."""
        levels = torch.full((embeds.shape[0],), noise_level, device=embeds.device)
        noise = randn(embeds.shape, generator, embeds.device, embeds.dtype)
        scaled = self.image_normalizer.scale(embeds)
        noised = self.image_noising_scheduler.add_noise(scaled, noise=noise, timesteps=levels)
        embedded_level = get_timestep_embedding(
            levels, embeds.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return torch.cat([self.image_normalizer.unscale(noised), embedded_level.to(embeds)], dim=1)

    def encode_images(self, image: Tensor | Image.Image | Sequence[Image.Image]
                      ) -> ImageEncodings:
        """VAE latents and CLIP embeddings of B objects' condition images (see
        :meth:`encode_condition` for ``image``), on the pipeline's device."""
        image = as_image_tensor(image).to(self.device)
        if image.shape[-1] % self.vae_scale_factor:
            raise ValueError(
                f"image side {image.shape[-1]} must be divisible by the VAE's downsampling factor "
                f"{self.vae_scale_factor}"
            )
        distinct = self.view_images(image)  # (B, 1|2, 3, H, W)
        flat = distinct.flatten(0, 1)
        embeds = self.image_encoder(self.clip_pixels(flat)).image_embeds
        return ImageEncodings(self.encode_latents(flat).unflatten(0, distinct.shape[:2]),
                              embeds.unflatten(0, distinct.shape[:2]))

    def encode_condition(
        self,
        image: Tensor | Image.Image | Sequence[Image.Image] | ImageEncodings,
        smplx_maps: Tensor | None = None,
        *,
        noise_level: int = 0,
        generator: torch.Generator | None = None,
    ) -> MultiViewCondition:
        """Condition for B objects.

        Args:
            image: ``(B, 3, H, W)`` float in [0, 1] (square, H divisible by the VAE factor, the
                body normalised and composited on white as PSHuman), or PIL image(s), or their
                :meth:`encode_images` (e.g. cached: the same condition, without re-encoding).
            smplx_maps: for 12-channel UNets only: ``(B, V_body or V, 3, H, W)`` in [0, 1], the
                SMPL-X condition map of each view (``drpose.render``); with V_body maps the face
                view gets the face crop of view 0's map.
            noise_level: unCLIP noise-augmentation level of the image embedding (PSHuman: 0).
            generator: for the embedding noise (on any device: :func:`drpose._devices.randn`).

        Call it under ``torch.no_grad()`` when training: nothing here is trained.
        """
        extra = self.unet.config.in_channels - 8
        if extra not in (0, 4):
            raise ValueError(
                f"UNet in_channels must be 8 or 12, got {self.unet.config.in_channels}"
            )
        if (smplx_maps is not None) != (extra == 4):
            raise ValueError(
                "smplx_maps are needed by (and only by) a 12-channel UNet; this UNet has "
                f"{self.unet.config.in_channels} input channels"
            )
        encoded = image if isinstance(image, ImageEncodings) else self.encode_images(image)
        batch, count = encoded.latents.shape[:2]
        if count != (2 if self.unet.config.face_view else 1):
            raise ValueError(f"image encodings of {count} condition images per object; this "
                             f"UNet needs {2 if self.unet.config.face_view else 1}")
        latents = self.expand_views(encoded.latents.to(self.device, self.vae.dtype))
        if smplx_maps is not None:
            latents = torch.cat([latents, self.encode_latents(self.smplx_views(smplx_maps))], 1)
        embeds = encoded.embeds.to(self.device, self.image_encoder.dtype).flatten(0, 1)
        labels = self.noise_image_embeddings(embeds, noise_level, generator)
        labels = self.expand_views(labels.unflatten(0, (batch, count)))
        prompts = self.prompt_embeds[:, None].expand(-1, batch, -1, -1, -1).flatten(1, 2)
        dtype = self.unet.dtype
        return MultiViewCondition(latents.to(dtype), labels.to(dtype), prompts.to(dtype))

    def smplx_views(self, maps: Tensor) -> Tensor:
        """``(B, V_body or V, 3, H, W) -> (B*V, 3, H, W)`` (face view = crop of view 0's map)."""
        maps = maps.to(self.device)
        body = self.unet.config.num_body_views
        if maps.shape[1] == body and self.views > body:
            maps = torch.cat([maps, face_crop(maps[:, 0])[:, None]], dim=1)
        if maps.shape[1] != self.views:
            raise ValueError(
                f"smplx_maps must have {body} or {self.views} views, got {tuple(maps.shape)}"
            )
        return maps.flatten(0, 1)

    # -- denoising -------------------------------------------------------------------------------

    def prepare_latents(
        self, cond: MultiViewCondition, generator: torch.Generator | None = None
    ) -> Tensor:
        """Initial noise ``(2*B*V, 4, h, w)``, rows [normal | colour] (independent noise)."""
        shape = (2 * cond.rows, self.unet.config.out_channels, *cond.image_latents.shape[-2:])
        noise = randn(shape, generator, self.device) * self.scheduler.init_noise_sigma
        return noise.to(self.unet.dtype)

    def unet_step(
        self, latents: Tensor, t: Tensor | int, cond: MultiViewCondition, guidance_scale: float
    ) -> Tensor:
        """One guided UNet evaluation.

        Args:
            latents: ``(2*B*V, 4, h, w)``, rows [normal | colour], each (object, view).
            t: the scheduler timestep (0-d tensor or int).
            cond: from :meth:`encode_condition`.
            guidance_scale: classifier-free guidance weight; <= 1 runs the conditional rows only.

        Returns:
            The guided model output ``(2*B*V, 4, h, w)`` (what the scheduler's
            ``prediction_type`` says: noise, v or x0). Differentiable; no ``no_grad`` inside.
        """
        rows = cond.rows
        if latents.shape[0] != 2 * rows:
            raise ValueError(f"latents must have 2 x {rows} rows, got {tuple(latents.shape)}")
        noisy = self.scheduler.scale_model_input(latents, t).view(2, 1, rows, *latents.shape[1:])
        image = cond.image_latents[None, None]
        labels = cond.class_labels[None, None]
        prompts = cond.prompt_embeds[:, None]  # (2, 1, rows, S, D)
        branches = 2 if guidance_scale > 1 else 1
        if branches == 2:  # [uncond | cond] inside each domain half, as PSHuman
            image = torch.cat([torch.zeros_like(image), image], dim=1)
            labels = torch.cat([torch.zeros_like(labels), labels], dim=1)
        shape = (2, branches)
        sample = torch.cat(
            [noisy.expand(*shape, -1, -1, -1, -1), image.expand(*shape, -1, -1, -1, -1)], dim=3
        ).flatten(0, 2)
        output = self.unet(
            sample,
            t,
            prompts.expand(*shape, -1, -1, -1).flatten(0, 2),
            class_labels=labels.expand(*shape, -1, -1).flatten(0, 2),
        ).sample.view(2, branches, rows, *latents.shape[1:])
        if branches == 2:
            guided = output[:, 0] + guidance_scale * (output[:, 1] - output[:, 0])
        else:
            guided = output[:, 0]
        return guided.reshape(latents.shape)

    def decode(self, latents: Tensor, chunk_size: int = 2) -> Tensor:
        """VAE-decode ``(M, 4, h, w)`` latents ``chunk_size`` images at a time (so memory does not
        grow with views x domains) into ``(M, 3, H, W)`` float32 in [0, 1]."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        scale = self.vae.config.scaling_factor
        chunks = [
            self.vae.decode(chunk.to(self.vae.dtype) / scale).sample.float().div(2).add(0.5)
            for chunk in latents.split(chunk_size)
        ]
        return torch.cat(chunks).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        image: Tensor | Image.Image | Sequence[Image.Image],
        smplx_maps: Tensor | None = None,
        *,
        num_inference_steps: int = 40,
        guidance_scale: float = 3.0,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        decode: bool = True,
        decode_chunk_size: int = 2,
        noise_level: int = 0,
        grid_path: str | Path | None = None,
    ) -> MultiViewOutput:
        """Generate the views of B objects (PSHuman defaults: 40 DDIM steps, eta 1, guidance 3,
        image-embedding noise level 0); arguments as :meth:`encode_condition` and
        :meth:`unet_step`. ``grid_path``: also write a PNG grid (rows: object x [normal, colour],
        columns: views).
        """
        cond = self.encode_condition(
            image, smplx_maps, noise_level=noise_level, generator=generator
        )
        latents = self.prepare_latents(cond, generator)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.scheduler.timesteps:
            model_output = self.unet_step(latents, t, cond, guidance_scale)
            latents = self.scheduler.step(
                model_output, t, latents, eta=eta, generator=generator
            ).prev_sample
        batch = cond.rows // self.views
        per_domain = latents.view(2, batch, self.views, *latents.shape[1:])
        normals = colours = None
        if decode:
            images = self.decode(latents, decode_chunk_size)
            normals, colours = images.view(2, batch, self.views, *images.shape[1:]).unbind(0)
        output = MultiViewOutput(normals, colours, per_domain[0], per_domain[1])
        if grid_path is not None:
            save_grid(output, grid_path)
        return output

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        local_dir: str | Path,
        *,
        torch_dtype: torch.dtype | str = torch.float32,
        prompt_embeds: str | Path | Tensor | None = None,
    ) -> MultiViewPipeline:
        """Load every component from a local folder (never the network).

        Args:
            local_dir: a folder of :meth:`save_pretrained`, or PSHuman's downloaded checkpoint
                repository (``pengHTYX/PSHuman_Unclip_768_6views``: its ``unet/`` in PSHuman's
                format, its ``tokenizer/`` and ``text_encoder/`` unused), or a Hugging Face cache
                folder of it (``snapshots/<revision>/``). Components (:data:`COMPONENTS`):
                ``unet`` (ours or PSHuman's), ``vae``, ``image_encoder``, ``feature_extractor``,
                ``image_normalizer``, ``image_noising_scheduler`` and ``scheduler`` (DDIM with
                the folder's config; without one, PSHuman's :data:`configs.PSHUMAN_SCHEDULER`,
                with a warning).
            torch_dtype: the dtype of every component and of the prompt embeddings (a
                ``torch.dtype`` or its name); float32 by default whatever the files hold.
            prompt_embeds: PSHuman's fixed prompt embeddings, ``normal_embeds.pt`` and
                ``clr_embeds.pt``: a folder holding them, a checkout of PSHuman's code repository
                (``mvdiffusion/data/fixed_prompt_embeds_7view/``), or the ``(2, V, S, D)`` tensor;
                None: ``local_dir/prompt_embeds/`` or the code repository's folder inside
                ``local_dir``.

        Raises:
            FileNotFoundError: a missing component or file, naming the folder and the component.
        """
        dtype = as_dtype(torch_dtype)
        root = resolve_snapshot(Path(local_dir))
        check_components(root)
        local = {"local_files_only": True}
        unet_config = json.loads((root / "unet" / "config.json").read_text())
        if unet_config.get("_class_name") == MultiViewUNet.__name__:
            unet = MultiViewUNet.from_pretrained(root, subfolder="unet", torch_dtype=dtype, **local)
        else:
            unet = MultiViewUNet.from_pshuman(root, torch_dtype=dtype)
        if not isinstance(prompt_embeds, Tensor):
            prompt_embeds = load_prompt_embeds(Path(prompt_embeds) if prompt_embeds else root)
        scheduler_config = root / "scheduler" / SCHEDULER_CONFIG
        if scheduler_config.is_file():
            scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler", **local)
        else:  # MultiViewUNet.from_pshuman warned already when the UNet is PSHuman's
            if unet.config.prediction_type is None:
                warnings.warn(f"no {scheduler_config}: using PSHuman's scheduler "
                              "(drpose.models.configs.PSHUMAN_SCHEDULER)", UserWarning,
                              stacklevel=2)
            scheduler = DDIMScheduler(**{
                **configs.PSHUMAN_SCHEDULER,
                "prediction_type": unet.config.prediction_type
                or configs.PSHUMAN_SCHEDULER["prediction_type"]})
        pipe = cls(
            unet=unet.eval(),
            vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype,
                                              **local).eval(),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(
                root / "image_encoder", torch_dtype=dtype, **local
            ).eval(),
            feature_extractor=CLIPImageProcessor.from_pretrained(
                root / "feature_extractor", **local
            ),
            image_normalizer=StableUnCLIPImageNormalizer.from_pretrained(
                root, subfolder="image_normalizer", torch_dtype=dtype, **local
            ).eval(),
            image_noising_scheduler=DDPMScheduler.from_pretrained(
                root, subfolder="image_noising_scheduler", **local
            ),
            scheduler=scheduler,
            prompt_embeds=prompt_embeds.to(dtype),
        )
        return pipe

    def save_pretrained(self, local_dir: str | Path) -> None:
        """Write every component in the layout :meth:`from_pretrained` reads (safetensors)."""
        root = Path(local_dir)
        self.unet.save_pretrained(root / "unet")
        self.vae.save_pretrained(root / "vae")
        self.image_encoder.save_pretrained(root / "image_encoder")
        self.feature_extractor.save_pretrained(root / "feature_extractor")
        self.image_normalizer.save_pretrained(root / "image_normalizer")
        self.image_noising_scheduler.save_pretrained(root / "image_noising_scheduler")
        self.scheduler.save_pretrained(root / "scheduler")
        (root / "prompt_embeds").mkdir(parents=True, exist_ok=True)
        for domain, name in enumerate(PROMPT_EMBED_FILES):
            torch.save(self.prompt_embeds[domain].clone(), root / "prompt_embeds" / name)
        make_readable(root)

    @classmethod
    def tiny(cls, seed: int = 0, **unet_overrides: Any) -> MultiViewPipeline:
        """Random-init tiny components for tests and CPU runs: 32x32 images, 16x16 latents (VAE
        factor 2), a 2-layer 32-d CLIP vision tower, the tiny UNet (epsilon prediction)."""
        torch.manual_seed(seed)
        embed_dim = 32
        unet = MultiViewUNet.tiny(prediction_type="epsilon", **unet_overrides).eval()
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        ).eval()
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=embed_dim,
        )
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        views = unet.views_per_object
        prompts = torch.randn(2, views, 8, unet.config.cross_attention_dim)
        return cls(
            unet=unet,
            vae=vae,
            image_encoder=CLIPVisionModelWithProjection(vision).eval(),
            feature_extractor=processor,
            image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim).eval(),
            image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
            scheduler=DDIMScheduler(**PSHUMAN_DDIM, prediction_type="epsilon"),
            prompt_embeds=prompts,
        )


def face_crop(image: Tensor) -> Tensor:
    """PSHuman's face view of ``(B, 3, H, W)`` square images: the top-centre ninth (768 px: box
    (256, 0, 512, 256)) upscaled bicubically to ``H x W``, clamped to [0, 1]."""
    height, width = image.shape[-2:]
    crop = image[..., : height // 3, width // 3 : width - width // 3]
    return F.interpolate(crop, size=(height, width), mode="bicubic", align_corners=False).clamp(
        0, 1
    )


def as_image_tensor(image: Tensor | Image.Image | Sequence[Image.Image]) -> Tensor:
    """``(B, 3, H, W)`` float in [0, 1] from a tensor (checked) or PIL image(s) (RGB)."""
    if isinstance(image, Image.Image):
        image = [image]
    if not isinstance(image, Tensor):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in image]
        image = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"image must be square (PSHuman), got {tuple(image.shape)}")
    return image.float()


def load_prompt_embeds(folder: Path) -> Tensor:
    """PSHuman's fixed prompt embeddings -> ``(2, V, S, D)`` [normal, colour], from ``folder``
    itself, ``folder/prompt_embeds/`` (:meth:`MultiViewPipeline.save_pretrained`) or
    ``folder/mvdiffusion/data/fixed_prompt_embeds_7view/`` (a checkout of PSHuman's code)."""
    for candidate in (folder, folder / "prompt_embeds", folder / PSHUMAN_PROMPT_EMBEDS):
        paths = [candidate / name for name in PROMPT_EMBED_FILES]
        if all(p.is_file() for p in paths):
            return torch.stack([torch.load(p, map_location="cpu", weights_only=True).float()
                                for p in paths])
    raise FileNotFoundError(
        f"prompt embeddings not found: none of {folder}, {folder / 'prompt_embeds'}, "
        f"{folder / PSHUMAN_PROMPT_EMBEDS} holds {' and '.join(PROMPT_EMBED_FILES)}; they are in "
        f"PSHuman's code repository ({PSHUMAN_PROMPT_EMBEDS}): copy them to "
        f"{folder / 'prompt_embeds'} or pass prompt_embeds= (that folder or the repository)"
    )


def resolve_snapshot(root: Path) -> Path:
    """``root``, or for a Hugging Face cache folder (``models--ORG--NAME``) its only (or
    ``refs/main``) snapshot."""
    snapshots = root / "snapshots"
    if (root / "unet").is_dir() or not snapshots.is_dir():
        return root
    ref = root / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    revisions = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(revisions) != 1:
        raise FileNotFoundError(
            f"{root} is a Hugging Face cache folder with {len(revisions)} snapshots and no "
            "refs/main: pass the snapshot folder itself"
        )
    return revisions[0]


def check_components(root: Path) -> None:
    """Raise FileNotFoundError naming ``root`` and every component of :data:`COMPONENTS` that is
    missing or lacks its config or weights."""
    if not root.is_dir():
        raise FileNotFoundError(f"MultiViewPipeline.from_pretrained: {root} is not a folder")
    problems = []
    for name, (config_name, weights) in COMPONENTS.items():
        folder = root / name
        if not folder.is_dir():
            if name != "scheduler":  # optional: PSHuman's scheduler is the default
                problems.append(f"{name} (no folder {folder})")
        elif not (folder / config_name).is_file():
            problems.append(f"{name} (no {folder / config_name})")
        elif weights and not any(folder.glob(weights)):
            problems.append(f"{name} (no weights {folder / weights})")
    if problems:
        hint = ""
        if (root / "config.json").is_file() and (root.parent / "vae").is_dir():
            hint = f"; {root} looks like a component folder: pass its parent {root.parent}"
        raise FileNotFoundError(
            f"MultiViewPipeline.from_pretrained: the pipeline folder {root} lacks component(s) "
            f"{'; '.join(problems)}; a pipeline folder holds {', '.join(COMPONENTS)} (PSHuman's "
            f"checkpoint repository or MultiViewPipeline.save_pretrained){hint}"
        )


def save_grid(output: MultiViewOutput, path: str | Path) -> Path:
    """Write a PNG grid: for each object a row of normal maps and a row of colour images,
    views left to right. Returns the path."""
    if output.normals is None or output.colours is None:
        raise ValueError("save_grid needs decoded images (decode=True)")
    rows = torch.stack([output.normals, output.colours], dim=1).flatten(0, 1)  # (2B, V, 3, H, W)
    grid = rows.permute(0, 3, 1, 4, 2)  # (2B, H, V, W, 3)
    grid = grid.reshape(rows.shape[0] * rows.shape[3], rows.shape[1] * rows.shape[4], 3)
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
