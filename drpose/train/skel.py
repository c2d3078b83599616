"""Stage ``skel``: trains g_skel (:class:`drpose.models.SkeletonNet`) and evaluates PoseScore.

Pairs come from the multi-view renders (:mod:`drpose.data.multiview`): the VAE latents of each
rendered view, normal and colour concatenated (``(V, 8, h, w)`` per object, scaled by the VAE's
scaling factor exactly as :meth:`MultiViewPipeline.encode_latents` does) <-> the object's 23
PoseScore joints projected by :func:`drpose.render.cameras.project_joints` into the views at the
map size (through :meth:`drpose.reward.PoseScore.targets`, so training and reward agree). Loss:
:func:`drpose.ops.pose_heatmap_loss` (BCE, batch mean). Training latents get Gaussian noise of
std ``latent_noise`` (the reward sees predicted x0 of a diffusion model, not clean encodings).

Evaluation on the held-out poses (written to ``<run_dir>/metrics.json``):

* ``psnr``, ``ssim``: sigmoid of the predicted maps vs the target heatmaps, each map a grey
  image, :func:`~drpose.render.image_metrics.image_metrics` over the (object, view) images with
  the 23 maps as channels (the paper reports 22.48 / 0.93 on THuman2.1 at its own resolution);
* ``keypoint_error_px``: mean distance (map pixels) between the argmax of each map and the
  projected joint, visible joints only; ``pck``: the fraction within ``pck_threshold`` x the map
  side (default 0.1: 3.2 px on 32 px maps, about a tenth of the body's height, which fills 96% of
  the map); ``pck_0.05`` at half that;
* ``pair_accuracy``: over ordered pairs (i, j), i != j, of held-out objects, the fraction where
  PoseScore(latents_i, joints_i) > PoseScore(latents_i, joints_j).

The folder ``<run_dir>/skel`` holds the network (``save_pretrained``) and ``posescore.json``
(sigma, views, and the VAE it learned from: folder and
:func:`~drpose.models.fingerprint.weights_fingerprint`) for :func:`load_posescore` and
:func:`check_vae`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from drpose._cli import UsageError
from drpose._devices import randn
from drpose._files import make_readable
from drpose.data.multiview import MultiViewRenders
from drpose.models import SkeletonNet
from drpose.models.fingerprint import weights_fingerprint
from drpose.ops import pose_heatmap_loss, render_heatmaps
from drpose.render import cameras
from drpose.render.image_metrics import image_metrics
from drpose.reward import PoseScore
from drpose.train import pretrain
from drpose.train import vae as vae_stage
from drpose.train.engine import (
    StepOutput,
    TrainConfig,
    Trainer,
    has_checkpoint,
    stage_device,
    step_generator,
)

SKEL_SUBFOLDER = "skel"
POSESCORE_FILE = "posescore.json"
JUDGE_RUN_NAME = "skel_judge"  # the default chain's judge g_skel (another seed and width)
JUDGE_SEED = 1
JUDGE_CHANNELS = (32, 64)


@dataclass
class SkelConfig:
    """Options of the ``skel`` stage.

    renders: render folder (None: the default chain's, built when missing). vae: VAE folder (the
    pipeline's VAE: ``<pipeline>/vae``, or the ``vae`` stage's output; None:
    :func:`drpose.train.pretrain.find_vae`). pipeline: a pipeline folder whose VAE g_skel learns
    from (sets ``vae`` to ``<pipeline>/vae``; the renders' side must be the pipeline's image side).
    batch_size: objects per step (x 6 views). sigma: heatmap sigma (map pixels). channels,
    map_scale: :class:`SkeletonNet` widths and map side / latent side. latent_noise: std of the
    training-latent noise. pck_threshold: PCK radius / map side.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        name="skel", steps=300, lr=2e-3, checkpoint_every=100, log_every=20))
    renders: str | None = None
    vae: str | None = None
    pipeline: str | None = None
    batch_size: int = 4
    sigma: float = 1.5
    channels: tuple[int, int] = (48, 96)
    map_scale: int = 2
    latent_noise: float = 0.1
    pck_threshold: float = 0.1


Config = SkelConfig  # the stage's config for ``python -m drpose.train skel``


class _SampleViews(torch.utils.data.Dataset):
    """``[normal | colour]`` views of some samples of a renders folder, uint8 ``(V, 2, 3, R, R)``
    per item (one sample file read per item)."""

    def __init__(self, data: MultiViewRenders, rows: Tensor) -> None:
        self.data, self.rows = data, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        row = int(self.rows[i])
        return torch.stack([self.data.normals[row], self.data.colours[row]], dim=1)


@torch.no_grad()
def view_latents(vae: AutoencoderKL, data: MultiViewRenders, chunk: int = 48,
                 index: slice | Tensor = slice(None), workers: int = 0) -> Tensor:
    """``(N, V, 8, h, w)``: ``[normal | colour]`` latents of every view of ``data[index]``:
    ``vae.encode(2x - 1).latent_dist.mode() * scaling_factor`` (the pipeline's encoding),
    encoded on the VAE's device about ``chunk`` images at a time and returned on the CPU.

    The renders are read through a DataLoader (``workers`` processes decode ahead; pinned
    memory on CUDA) a chunk of samples at a time, as uint8, converted to float on the VAE's
    device: memory is one chunk's images (at 768², 6 views x 2 domains: 21 MB per sample in
    uint8, 85 MB in float32) and the latents (1.8 MB per sample at 96² latents)."""
    rows = torch.arange(len(data))[index]
    per_sample = 2 * data.normals.shape[1]
    scale = vae.config.scaling_factor
    loader = torch.utils.data.DataLoader(
        _SampleViews(data, rows), batch_size=max(1, chunk // per_sample), num_workers=workers,
        pin_memory=vae.device.type == "cuda")
    latents = []
    for both in loader:  # (n, V, 2, 3, R, R) uint8
        flat = both.flatten(0, 2).to(vae.device, non_blocking=True).to(vae.dtype) / 255
        encoded = vae.encode(flat * 2 - 1).latent_dist.mode() * scale
        latents.append(encoded.cpu().unflatten(0, both.shape[:3]).flatten(2, 3))
    return torch.cat(latents) if latents else torch.zeros(0)


@torch.no_grad()
def evaluate(reward: PoseScore, latents: Tensor, joints: Tensor,
             normalization: cameras.BodyNormalization, pck_threshold: float = 0.1
             ) -> dict[str, float]:
    """Held-out metrics (module docstring) of ``reward`` on latents ``(M, V, 8, h, w)``, joints
    ``(M, J, 3)`` world metres with their normalisation."""
    logits = reward.logits(latents)  # (M, V, J, H, W)
    size = tuple(logits.shape[-2:])
    keypoints, visible = reward.targets(joints, size, normalization)
    target = render_heatmaps(keypoints, visible, size=size, sigma=reward.sigma)
    images = image_metrics(torch.sigmoid(logits).flatten(0, 1), target.flatten(0, 1))
    width = size[1]
    peak = logits.flatten(-2).argmax(dim=-1)
    predicted = torch.stack([peak % width, peak // width], dim=-1).to(keypoints)
    error = (predicted - keypoints).norm(dim=-1)[visible]
    count = latents.shape[0]
    scores = torch.stack([
        -pose_heatmap_loss(logits[i].expand(count, -1, -1, -1, -1), keypoints, visible,
                           sigma=reward.sigma, reduction="none", backend=reward.backend)
        for i in range(count)])  # scores[i, j] = PoseScore(latents_i, joints_j)
    own = scores.diagonal()[:, None]
    off = ~torch.eye(count, dtype=torch.bool, device=scores.device)
    return {
        "psnr": images["psnr"], "ssim": images["ssim"],
        "keypoint_error_px": float(error.mean()),
        "pck": float((error <= pck_threshold * width).float().mean()),
        "pck_0.05": float((error <= 0.5 * pck_threshold * width).float().mean()),
        "pair_accuracy": float((own > scores)[off].float().mean()),
        "posescore_own": float(own.mean()), "posescore_other": float(scores[off].mean()),
        "pairs": int(off.sum()),
    }


def pipeline_image_side(folder: str | Path) -> int:
    """The image side (pixels) a pipeline folder generates: ``unet.sample_size`` x the VAE's
    downsampling factor ``2 ** (len(vae.block_out_channels) - 1)``, read from their configs."""
    folder = Path(folder)
    configs = {}
    for part in ("unet", "vae"):
        file = folder / part / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{folder} is not a pipeline folder: {file} is missing")
        configs[part] = json.loads(file.read_text())
    return configs["unet"]["sample_size"] * 2 ** (len(configs["vae"]["block_out_channels"]) - 1)


def resolve_vae(config: SkelConfig, data: MultiViewRenders) -> Path:
    """The VAE folder of ``config``: ``<pipeline>/vae`` when a pipeline is given (its image side
    must be the renders' side), else :func:`drpose.train.pretrain.find_vae` of ``config.vae``."""
    if config.pipeline is None:
        return pretrain.find_vae(config.vae, config.train.runs_dir)
    side = pipeline_image_side(config.pipeline)
    if side != data.config.resolution:
        raise ValueError(
            f"renders {config.renders} are {data.config.resolution} px, pipeline "
            f"{config.pipeline} generates {side} px: make renders at its side with "
            f"'python -m drpose.data renders --resolution {side} --out DIR' and pass --renders DIR")
    return Path(config.pipeline) / "vae"


def run(config: SkelConfig, *, resume: bool = False) -> Path:
    """Train g_skel; returns ``<run_dir>/skel`` (network + ``posescore.json``)."""
    data = MultiViewRenders.load(config.renders or vae_stage.default_renders())
    device = stage_device(config.train)
    vae_dir = resolve_vae(config, data)
    vae = vae_stage.load_vae(vae_dir)
    vae_fingerprint = weights_fingerprint(vae)
    vae.to(device)
    train, held = data.subset("train"), data.subset("eval")
    workers = 2 if device.type == "cuda" else 0  # decode ahead while the GPU encodes
    train_latents = view_latents(vae, train, workers=workers)
    held_latents = view_latents(vae, held, workers=workers)
    torch.manual_seed(config.train.seed)
    del vae  # its latents are made
    net = SkeletonNet(in_channels=train_latents.shape[2], channels=tuple(config.channels),
                      map_scale=config.map_scale).to(device)
    size = net.output_size(tuple(train_latents.shape[-2:]))
    # the reward's projection gives the targets (g_skel's parameters are shared with net)
    reward = PoseScore(net, sigma=config.sigma)
    keypoints, visible = reward.targets(train.joints, size, train.normalization())
    net.train().requires_grad_(True)
    trainer = Trainer(config.train, net)
    trainer.begin(resume)

    def step(index: int) -> StepOutput:
        generator = step_generator(config.train.seed, index)
        objects = torch.randint(len(train), (config.batch_size,), generator=generator)
        latents = train_latents[objects].to(device)
        latents = latents + config.latent_noise * randn(latents.shape, generator, device)
        logits = net(latents.flatten(0, 1)).unflatten(0, latents.shape[:2])
        loss = pose_heatmap_loss(logits, keypoints[objects].to(device),
                                 visible[objects].to(device), sigma=config.sigma)
        return StepOutput(loss)

    last = trainer.fit(step)
    trainer.close()
    reward = PoseScore(net.eval(), sigma=config.sigma)
    metrics = evaluate(reward, held_latents.to(device), held.joints.to(device),
                       held.normalization().to(device), config.pck_threshold)
    out = config.train.run_dir / SKEL_SUBFOLDER
    net.save_pretrained(out)
    make_readable(out)
    (out / POSESCORE_FILE).write_text(json.dumps(
        {"sigma": config.sigma, "views": reward.views, "vae_fingerprint": vae_fingerprint,
         "vae": str(vae_dir)}, indent=1))
    (config.train.run_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "train_loss": last.get("loss"), "map_size": list(size),
         "config": asdict(config)}, indent=1, default=str))
    print(f"skel: held-out PCK {metrics['pck']:.3f}, pair accuracy "
          f"{metrics['pair_accuracy']:.3f} after {trainer.step} steps ({out})")
    return out


def load_posescore(folder: str | Path, **options) -> PoseScore:
    """The PoseScore of a ``skel`` output folder (g_skel + its sigma and views); ``options`` go
    to :class:`PoseScore` (e.g. ``lpips=``, ``backend=``)."""
    folder = Path(folder)
    settings = json.loads((folder / POSESCORE_FILE).read_text())
    net = SkeletonNet.from_pretrained(folder, local_files_only=True)
    return PoseScore(net, views=settings["views"], sigma=settings["sigma"], **options)


def check_vae(skel_dir: str | Path, vae: nn.Module, pipeline: str | Path) -> None:
    """Refuse a g_skel that learned from another VAE's latents than ``vae`` (``pipeline``'s):
    a :class:`UsageError` naming both folders. A g_skel folder that records no VAE (written
    before drpose recorded it) gets a warning: it cannot be checked."""
    settings = json.loads((Path(skel_dir) / POSESCORE_FILE).read_text())
    recorded = settings.get("vae_fingerprint")
    if recorded is None:
        warnings.warn(f"{skel_dir}/{POSESCORE_FILE} records no VAE: cannot check that this "
                      f"g_skel learned from the latents of pipeline {pipeline}'s VAE (retrain it "
                      f"with 'python -m drpose.train skel --pipeline {pipeline}')", stacklevel=2)
        return
    actual = weights_fingerprint(vae)
    if recorded != actual:
        raise UsageError(
            f"--skel {skel_dir}: this g_skel learned from the latents of another VAE "
            f"({settings.get('vae', '?')}, fingerprint {recorded}) than pipeline {pipeline}'s "
            f"(fingerprint {actual}), so its PoseScore of this pipeline's latents means nothing; "
            f"train one on it: python -m drpose.train skel --pipeline {pipeline} --renders DIR "
            "(renders at the pipeline's image side)")


def default_config(cache_dir: str | Path) -> SkelConfig:
    """The CPU default ``skel`` config, writing under ``cache_dir``."""
    cache = Path(cache_dir)
    config = SkelConfig(renders=str(cache / "renders"),
                        vae=str(cache / "vae" / vae_stage.VAE_SUBFOLDER))
    config.train.runs_dir = str(cache)
    return config


def judge_config(cache_dir: str | Path) -> SkelConfig:
    """The default chain's judge g_skel: :func:`default_config` with seed ``JUDGE_SEED`` and
    widths ``JUDGE_CHANNELS`` (same renders: independent of the reward's g_skel in its
    initialisation, data order and width, not in its poses)."""
    config = default_config(cache_dir)
    config.train.name, config.train.seed = JUDGE_RUN_NAME, JUDGE_SEED
    config.channels = JUDGE_CHANNELS
    return config


def _ensure(config: SkelConfig, cache_dir: str | Path, stage: str) -> Path:
    out = config.train.run_dir / SKEL_SUBFOLDER
    if not (out / pretrain.DONE_FILE).is_file():
        pretrain.ensure_vae(cache_dir)
        out = run(config, resume=has_checkpoint(config.train.run_dir))
        (out / pretrain.DONE_FILE).write_text(json.dumps({"stage": stage}))
    return out


def ensure_default(cache_dir: str | Path) -> Path:
    """The default g_skel folder under ``cache_dir`` (renders, VAE and g_skel built and cached
    when missing); load it with :func:`load_posescore`."""
    return _ensure(default_config(cache_dir), cache_dir, "skel")


def ensure_judge(cache_dir: str | Path) -> Path:
    """The default judge g_skel folder (:func:`judge_config`), built and cached when missing."""
    return _ensure(judge_config(cache_dir), cache_dir, "skel_judge")
