"""Image synthesis for DrPose15K: ``(pose sequence, reference portrait) -> frames``.

A :class:`Synthesizer` turns the T frames of a :class:`~drpose.motion.sequence.PoseSequence` (and,
where the backend uses one, a reference portrait) into T square RGB frames of the posed person,
seen by PSHuman's front camera (:mod:`drpose.render.cameras`: view 0, orthographic, the body
normalised per frame with ``normalize_body(mode="inference")``, so it fills 740/768 of the
image's longer side as PSHuman's input crop does). Every backend returns a :class:`SynthFrames`:
the images, the body's silhouette, and the posed body's joints, keypoints and camera, so a
dataset can pair each image with its SMPL-X parameters.

Backends:

- :class:`RenderSynthesizer` (``"render"``): the SMPL-X body (the licensed model or the stand-in,
  :func:`drpose.body.load_smplx`) rasterised with :func:`drpose.ops.rasterize`, coloured by body
  part from a random palette (:class:`Palette`: skin, hair, top, bottom, shoes; the portrait is
  not used, the palette is the identity) and shaded ``albedo * (ambient + (1 - ambient) *
  max(0, n . l))`` with interpolated vertex normals, on a white background. Offline, for tests and
  the default run.
- :class:`DiffusersSynthesizer` (``"diffusers"``): a pose ControlNet Stable Diffusion pipeline
  loaded from a local folder, conditioned on OpenPose-style skeleton drawings
  (:mod:`drpose.render.draw`) or SMPL-X normal renders; with a portrait it runs image-to-image from
  it, so the portrait sets the identity.
"""

from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from drpose.body import COCO17, load_smplx, posed_body, resolve_model_dir
from drpose.motion.sequence import PoseSequence
from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import encode_normals, vertex_normals
from drpose.render.draw import skeleton_images

FRONT_VIEW = (0,)
NUM_SKELETON_JOINTS = 55
PART_NAMES: tuple[str, ...] = ("skin", "hair", "top", "bottom", "shoes")
SKIN, HAIR, TOP, BOTTOM, SHOES = range(len(PART_NAMES))

# SMPL-X skeleton joint -> body part of the vertices it moves most (its largest skinning weight).
# Forearms (elbow joints) and shins (knee joints) follow the sleeve and leg length of the palette.
_TOP_JOINTS = (3, 6, 9, 13, 14, 16, 17)  # spine1-3, collars, shoulders (upper arms)
_BOTTOM_JOINTS = (0, 1, 2)  # pelvis, hips (thighs)
_SHOE_JOINTS = (7, 8, 10, 11)  # ankles, feet
_HEAD_JOINTS = (15, 22, 23, 24)  # head, jaw, eyes: split into face skin and hair
_FOREARM_JOINTS = (18, 19)
_SHIN_JOINTS = (4, 5)
# Hair: head vertices (rest pose) above the brows or behind the head joint, above the ears.
HAIR_ABOVE_EYES = 0.035  # metres
HAIR_BEHIND_HEAD = 0.01
HAIR_ABOVE_HEAD_JOINT = 0.02


@dataclass(frozen=True)
class BodyFrames:
    """The posed bodies behind T frames of resolution R (float32 unless noted).

    joints: (T, 55, 3) SMPL-X skeleton joints, world metres (y up, the body faces +z).
    keypoints: (T, 17, 2) COCO-17 keypoints in image pixels (centres at integers, y down).
    visible: (T, 17) bool, inside the frame.
    camera_center: (T, 3) metres and camera_scale: (T,) normalised units per metre: the body
        normalisation ``p_norm = (p_world - center) * scale`` seen by the rig's front camera.
    mask: (T, 1, R, R) 1 where the body covers the pixel centre.
    normals: (T, 3, R, R) unit world normals (front camera frame), 0 on background.
    face_index: (T, R, R) int64 triangle under each pixel, -1 on background.
    """

    joints: Tensor
    keypoints: Tensor
    visible: Tensor
    camera_center: Tensor
    camera_scale: Tensor
    mask: Tensor
    normals: Tensor
    face_index: Tensor


@dataclass(frozen=True)
class SynthFrames:
    """Synthesised frames: images (T, 3, R, R) float32 in [0, 1], masks (T, 1, R, R) float32
    (the body's silhouette; for generative backends the silhouette of the conditioning body),
    the posed bodies (:class:`BodyFrames`) and, for the render backend, the palette (T, 5, 3)
    float32 RGB of :data:`PART_NAMES` (None otherwise)."""

    images: Tensor
    masks: Tensor
    body: BodyFrames
    palette: Tensor | None = None


class Synthesizer(Protocol):
    """``synth(poses, portrait, seed=s) -> SynthFrames`` for the T frames of ``poses``.

    ``portrait``: (3, H, W) float in [0, 1] or None; ``seed`` makes the output deterministic (the
    same poses, portrait and seed give the same frames).
    """

    name: str
    resolution: int

    def __call__(self, poses: PoseSequence, portrait: Tensor | None = None, *,
                 seed: int = 0) -> SynthFrames: ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that determine the output (recorded in a dataset's format.json)."""
        ...


class BodyPoser:
    """Poses an SMPL-X model for a :class:`PoseSequence` and renders it from the front camera.

    Args:
        model_dir: SMPL-X folder (default: :func:`drpose.body.resolve_model_dir`, the stand-in
            when none is configured).
        resolution: image side R in pixels.
        batch_size: frames posed and rasterised at once (bounds memory at large R).
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, *, resolution: int = 768,
                 batch_size: int = 8) -> None:
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
        self.model_dir = resolve_model_dir(model_dir)
        self.model = load_smplx(self.model_dir)
        self.resolution = resolution
        self.batch_size = batch_size
        self.faces = self.model.faces_tensor.to(torch.int32).contiguous()

    def __call__(self, poses: PoseSequence) -> BodyFrames:
        """Pose and render every frame of ``poses`` (T >= 1 frames)."""
        if len(poses) == 0:
            raise ValueError("poses: the sequence has no frames")
        parts = [self._batch(poses.take(slice(s, s + self.batch_size)))
                 for s in range(0, len(poses), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return BodyFrames(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                             for f in fields(BodyFrames)})

    def body_model(self) -> str:
        """``"standin:<generator version>"`` for the stand-in model, else the model folder."""
        folder = self.model_dir.resolve()
        if folder.parent.name == "standin":
            return f"standin:{folder.name}"
        return str(folder)

    @torch.no_grad()
    def _batch(self, poses: PoseSequence) -> BodyFrames:
        size = (self.resolution, self.resolution)
        num_betas = self.model.num_betas
        betas = torch.zeros(len(poses), num_betas)
        count = min(num_betas, poses.betas.shape[1])
        betas[:, :count] = torch.from_numpy(poses.betas[:, :count])
        extra = {name: torch.from_numpy(value) for name in ("left_hand_pose", "right_hand_pose",
                                                            "jaw_pose")
                 if (value := getattr(poses, name)) is not None}
        body = posed_body(self.model, torch.from_numpy(poses.body_pose),
                          torch.from_numpy(poses.global_orient), betas=betas,
                          transl=torch.from_numpy(poses.transl), **extra)
        norm = cameras.normalize_body(body.vertices)
        keypoints, visible = cameras.project_joints(
            body.joints[:, list(COCO17.indices)], FRONT_VIEW, size, normalization=norm)
        matrices = cameras.rows_top_down(cameras.world_to_clip(norm, FRONT_VIEW))
        pos = cameras.transform_points(body.vertices, matrices)[:, 0]
        rast = rasterize(pos.float().contiguous(), self.faces, size)  # rows top-down
        covered = rast[..., 3] > 0
        normals = interpolate(vertex_normals(body.vertices, body.faces).float(), rast, self.faces)
        normals = torch.nn.functional.normalize(normals, dim=-1) * covered[..., None]
        return BodyFrames(
            joints=body.joints[:, :NUM_SKELETON_JOINTS].float(),
            keypoints=keypoints[:, 0].float(),
            visible=visible[:, 0],
            camera_center=norm.center.float(),
            camera_scale=norm.scale.float(),
            mask=covered[:, None].float(),
            normals=normals.permute(0, 3, 1, 2).contiguous(),
            face_index=rast[..., 3].round().long() - 1,
        )


@dataclass(frozen=True)
class Palette:
    """Random appearance of one person: RGB in [0, 1] per part of :data:`PART_NAMES`, and whether
    the sleeves and trousers are long (forearms / shins clothed) or short (skin)."""

    colours: np.ndarray  # (5, 3) float32
    long_sleeves: bool
    long_trousers: bool

    @classmethod
    def random(cls, seed: int) -> Palette:
        """Deterministic in ``seed``: skin tones along a light-to-dark brown line, hair dark to
        blond, clothes any hue, shoes darker."""
        rng = np.random.default_rng(seed)
        light, dark = np.array([0.96, 0.80, 0.69]), np.array([0.36, 0.22, 0.15])
        skin = light + rng.uniform(0, 1) * (dark - light)
        hair = np.array([0.08, 0.06, 0.05]) + rng.uniform(0, 1) * np.array([0.75, 0.62, 0.40])
        clothes = [_hsv(rng.uniform(0, 1), rng.uniform(0.15, 0.9), rng.uniform(0.25, 0.95))
                   for _ in range(2)]
        shoes = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.1, 0.6))
        colours = np.stack([skin, hair, *clothes, shoes]).astype(np.float32)
        return cls(colours=colours, long_sleeves=bool(rng.uniform() < 0.5),
                   long_trousers=bool(rng.uniform() < 0.7))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def vertex_regions(weights: Tensor, template: Tensor, joints: Tensor) -> Tensor:
    """(V,) int64 body region per vertex from skinning weights (V, 55) and the rest pose
    (template (V, 3), joints (55, 3), metres): a part index, or -1 forearm, -2 shin (their part
    depends on the palette)."""
    owner = weights.argmax(dim=1)
    region = torch.full_like(owner, SKIN)
    for group, part in ((_TOP_JOINTS, TOP), (_BOTTOM_JOINTS, BOTTOM), (_SHOE_JOINTS, SHOES),
                        (_FOREARM_JOINTS, -1), (_SHIN_JOINTS, -2)):
        region[torch.isin(owner, torch.tensor(group))] = part
    eyes = joints[23:25].mean(dim=0)
    head = joints[15]
    y, z = template[:, 1], template[:, 2]
    hair = (y > eyes[1] + HAIR_ABOVE_EYES) | (
        (z < head[2] - HAIR_BEHIND_HEAD) & (y > head[1] + HAIR_ABOVE_HEAD_JOINT))
    region[torch.isin(owner, torch.tensor(_HEAD_JOINTS)) & hair] = HAIR
    return region


class RenderSynthesizer:
    """The ``render`` backend (module docstring). Portrait: ignored (the palette is the identity).

    Args:
        resolution: image side R. model_dir: SMPL-X folder (default: configured or stand-in).
        ambient: ambient light fraction in [0, 1]. light: direction towards the light, world
            frame (normalised). batch_size: frames rendered at once.
    """

    name = "render"

    def __init__(self, resolution: int = 768, *, model_dir: str | os.PathLike | None = None,
                 ambient: float = 0.35, light: tuple[float, float, float] = (-0.3, 0.5, 1.0),
                 batch_size: int = 8) -> None:
        if not 0 <= ambient <= 1:
            raise ValueError(f"ambient must be in [0, 1], got {ambient}")
        self.poser = BodyPoser(model_dir, resolution=resolution, batch_size=batch_size)
        self.resolution = resolution
        self.ambient = ambient
        self.light = torch.nn.functional.normalize(torch.tensor(light, dtype=torch.float32), dim=0)
        model = self.poser.model
        template = model.v_template.detach().float()
        rest_joints = model.J_regressor.detach().float() @ template
        regions = vertex_regions(model.lbs_weights.detach(), template, rest_joints)
        # A triangle takes the region of its first vertex: every pixel gets exactly one colour.
        self.face_regions = regions[self.poser.faces[:, 0].long()]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "resolution": self.resolution, "ambient": self.ambient,
                "light": [round(float(x), 6) for x in self.light],
                "batch_size": self.poser.batch_size,  # float rounding of posing depends on it
                "body_model": self.poser.body_model()}

    def face_colours(self, palette: Palette) -> Tensor:
        """(F, 3) float32 albedo of every triangle for a palette."""
        colours = torch.from_numpy(palette.colours)
        regions = self.face_regions.clone()
        regions[regions == -1] = TOP if palette.long_sleeves else SKIN
        regions[regions == -2] = BOTTOM if palette.long_trousers else SKIN
        return colours[regions]

    def __call__(self, poses: PoseSequence, portrait: Tensor | None = None, *,
                 seed: int = 0) -> SynthFrames:
        """Frames of ``poses`` in one person's palette (``Palette.random(seed)``)."""
        body = self.poser(poses)
        palette = Palette.random(seed)
        albedo = self.face_colours(palette)[body.face_index.clamp(min=0)]  # (T, R, R, 3)
        lambert = torch.einsum("tchw,c->thw", body.normals, self.light).clamp(0, 1)
        shade = self.ambient + (1 - self.ambient) * lambert  # (T, R, R) in [ambient, 1]
        shaded = albedo.permute(0, 3, 1, 2) * shade[:, None]
        images = torch.where(body.mask > 0, shaded, torch.ones(()))
        palettes = torch.from_numpy(palette.colours).expand(len(poses), -1, -1).clone()
        return SynthFrames(images=images, masks=body.mask, body=body, palette=palettes)


DIFFUSERS_PIPELINE_HINT = (
    "expected a local diffusers StableDiffusionControlNetPipeline folder (model_index.json, "
    "unet/, controlnet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. written by "
    "StableDiffusionControlNetPipeline(...).save_pretrained(DIR) from a pose ControlNet and an "
    "SD 1.5 base; nothing is downloaded"
)


class DiffusersSynthesizer:
    """The ``diffusers`` backend: a pose ControlNet pipeline from a local folder.

    Every frame is generated from the same initial noise (``seed``), conditioned on the frame's
    pose: ``condition="skeleton"`` draws the COCO-17 keypoints OpenPose-style
    (:func:`drpose.render.draw.skeleton_images`), ``"normals"`` uses the SMPL-X normal render in
    PSHuman's colours (:func:`drpose.render.conditions.encode_normals`, white background). With a
    portrait the image-to-image ControlNet pipeline starts from it (``portrait_strength`` = how
    much noise is added; 1 ignores the portrait).

    Args:
        model_dir: the pipeline folder (see :data:`DIFFUSERS_PIPELINE_HINT`).
        resolution: image side R (a multiple of the VAE's factor times 8 for real SD models).
        condition: "skeleton" or "normals". prompt, negative_prompt: text conditioning.
        steps: denoising steps. guidance_scale: classifier-free guidance (<= 1 disables it).
        smplx_dir: SMPL-X folder for the poses (default: configured or stand-in).
        device, dtype: where the pipeline runs.
    """

    name = "diffusers"

    def __init__(self, model_dir: str | os.PathLike, resolution: int = 512, *,
                 condition: Literal["skeleton", "normals"] = "skeleton",
                 prompt: str = "a full-body photo of a person, plain white background",
                 negative_prompt: str = "", steps: int = 25, guidance_scale: float = 7.5,
                 portrait_strength: float = 0.8, smplx_dir: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        from diffusers import (
            StableDiffusionControlNetImg2ImgPipeline,
            StableDiffusionControlNetPipeline,
        )

        if condition not in ("skeleton", "normals"):
            raise ValueError(f"condition must be 'skeleton' or 'normals', got {condition!r}")
        folder = Path(model_dir)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder}: no model_index.json; {DIFFUSERS_PIPELINE_HINT}")
        try:
            self.pipe = StableDiffusionControlNetPipeline.from_pretrained(
                folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"{folder}: cannot load the pipeline ({error}); "
                             f"{DIFFUSERS_PIPELINE_HINT}") from error
        self.pipe.to(device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.img2img = StableDiffusionControlNetImg2ImgPipeline(**self.pipe.components,
                                                                requires_safety_checker=False)
        self.img2img.set_progress_bar_config(disable=True)
        self.poser = BodyPoser(smplx_dir, resolution=resolution)
        self.resolution = resolution
        self.condition = condition
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.guidance_scale = steps, guidance_scale
        self.portrait_strength = portrait_strength
        self.device = torch.device(device)
        self.model_dir = folder

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "resolution": self.resolution, "model": str(self.model_dir),
                "condition": self.condition, "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "steps": self.steps,
                "guidance_scale": self.guidance_scale,
                "portrait_strength": self.portrait_strength,
                "body_model": self.poser.body_model()}

    def conditions(self, body: BodyFrames) -> Tensor:
        """(T, 3, R, R) float32 in [0, 1]: the ControlNet condition images of the frames."""
        if self.condition == "skeleton":
            return skeleton_images(body.keypoints, body.visible, self.resolution)
        return encode_normals(body.normals, body.mask)

    @torch.no_grad()
    def __call__(self, poses: PoseSequence, portrait: Tensor | None = None, *,
                 seed: int = 0) -> SynthFrames:
        """Frames of ``poses``; portrait (3, H, W) in [0, 1] or None."""
        body = self.poser(poses)
        control = self.conditions(body).to(self.device, self.pipe.unet.dtype)
        frames = len(poses)
        generators = [torch.Generator(self.device).manual_seed(seed) for _ in range(frames)]
        common = dict(prompt=[self.prompt] * frames,
                      negative_prompt=[self.negative_prompt] * frames,
                      num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                      generator=generators, output_type="pt")
        if portrait is None:
            out = self.pipe(image=control, height=self.resolution, width=self.resolution,
                            **common)
        else:
            if portrait.dim() != 3 or portrait.shape[0] != 3:
                raise ValueError(f"portrait: expected (3, H, W), got {tuple(portrait.shape)}")
            start = torch.nn.functional.interpolate(
                portrait[None].float(), size=(self.resolution, self.resolution), mode="bilinear",
                antialias=True, align_corners=False).clamp(0, 1)
            out = self.img2img(image=start.expand(frames, -1, -1, -1).to(control),
                               control_image=control, strength=self.portrait_strength,
                               height=self.resolution, width=self.resolution, **common)
        images = out.images.float().cpu().clamp(0, 1)
        return SynthFrames(images=images, masks=body.mask, body=body)


SYNTH_BACKENDS = ("render", "diffusers")


def make_synthesizer(name: str, resolution: int, *, model_dir: str | os.PathLike | None = None,
                     smplx_dir: str | os.PathLike | None = None, **options) -> Synthesizer:
    """A backend by name: ``"render"`` (``options`` go to :class:`RenderSynthesizer`) or
    ``"diffusers"`` (needs ``model_dir``; ``options`` go to :class:`DiffusersSynthesizer`)."""
    if name == "render":
        return RenderSynthesizer(resolution, model_dir=smplx_dir, **options)
    if name == "diffusers":
        if model_dir is None:
            raise ValueError(f"the diffusers backend needs a model folder; "
                             f"{DIFFUSERS_PIPELINE_HINT}")
        return DiffusersSynthesizer(model_dir, resolution, smplx_dir=smplx_dir, **options)
    raise ValueError(f"unknown synthesizer {name!r}; expected one of {SYNTH_BACKENDS}")
