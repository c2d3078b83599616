"""Multi-view renders of posed bodies in PSHuman's rig: the training data of the stages before
the reward loop (VAE, multi-view pretraining, g_skel).

For N SMPL-X poses (farthest-point-sampled from a pose set, :mod:`drpose.motion.select`) every
sample holds, for the 6 body views of :mod:`drpose.render.cameras` in rig order:

* ``normals``: PSHuman's normal colours ``n * 0.5 + 0.5`` (front-camera-frame normals, white
  background, :func:`drpose.render.conditions.encode_normals`);
* ``colours``: the body coloured by part from a random per-sample palette (the ``render`` synth
  backend's :class:`~drpose.data.synth.Palette` and part regions), shaded
  ``albedo * (ambient + (1 - ambient) max(0, n . l))`` with the light fixed in each *camera's*
  frame (so back and side views are lit like the front one), on white;
* ``masks``: the silhouettes;

views 3 and 4 mirrored as PSHuman generates them, the body placed with
``normalize_body(mode="inference")``. The input image of a sample is one of its colour views
(``input_view``, default the front view 0). Also stored: the 23 PoseScore joints (world metres),
the normalisation (centre, scale) that places them in the view box, the SMPL-X parameters and
the palette. ``keypoints(size)`` projects the joints with :func:`drpose.render.cameras.
project_joints` (``visibility="frame"``: a skeleton map shows every joint, occluded or not,
because the reward only has the pose, not the scene's occlusions).

Everything is deterministic given the config (pose selection, palettes from ``seed``). A folder
holds ``samples/NNNNNN.npz`` (one compressed file per sample: its uint8 images), ``arrays.npz``
(the float32 joints, normalisations, poses and palettes of all samples) and ``meta.json`` (the
config; written last, so it marks a complete folder); see :func:`load_or_build`. Images are
built, written and read one sample at a time: memory does not grow with the number of samples
(at 768², one sample's images are 24.8 MB of uint8).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drpose._progress import progress
from drpose.body import POSESCORE_JOINTS, load_smplx, posed_body
from drpose.data import scans
from drpose.data.synth import Palette, vertex_regions
from drpose.motion.load import default_pose_sequences
from drpose.motion.select import farthest_point_sampling, pose_features
from drpose.motion.sequence import PoseSequence, concatenate
from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import encode_normals, vertex_normals

FORMAT_VERSION = 2  # 1: one renders.npz with every sample's images
SAMPLES_DIR = "samples"
ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"
IMAGE_ARRAYS = ("normals", "colours", "masks")
NUM_VIEWS = len(cameras.BODY_VIEWS)


@dataclass
class RenderConfig:
    """What :func:`build_renders` makes.

    num_poses: N samples. resolution: image side R (pixels). held_out: every ``held_out``-th
    sample (by FPS pick order, starting at index ``held_out - 1``) is held out for evaluation.
    seed: palettes (sample i gets ``Palette.random(seed * 100003 + i)``). input_view: the view
    used as the input image. ambient, light: shading (light direction in each camera's frame,
    x right, y up, z towards the camera). model_dir: SMPL-X folder (None: configured or
    stand-in). motion: a pose file (:func:`drpose.motion.load.load_motion`) or None for the
    packaged sample.

    The bodies are SMPL-X in palette colours unless a scan source is given
    (:mod:`drpose.data.scans`): ``scans``, a THuman2.1-layout folder (one sample per subject in
    its fitted pose, ``num_poses`` unused; ``fits``: where the fits are when not beside the
    meshes), or ``mesh``, one textured mesh fitted by SMPL-X (``fit_steps`` chamfer steps) and
    posed into the ``num_poses`` selected poses. Scan samples have no palette (zeros).
    """

    num_poses: int = 96
    resolution: int = 64
    held_out: int = 6
    seed: int = 0
    input_view: int = 0
    ambient: float = 0.35
    light: tuple[float, float, float] = (-0.3, 0.5, 1.0)
    model_dir: str | None = None
    motion: str | None = None
    scans: str | None = None
    fits: str | None = None
    mesh: str | None = None
    fit_steps: int = 300

    def __post_init__(self) -> None:
        if self.scans is not None and self.mesh is not None:
            raise ValueError("RenderConfig: give scans (a THuman2.1-layout folder) or mesh (one "
                             "mesh to pose), not both")


@dataclass
class RenderedSample:
    """One sample's arrays (see the module docstring); V = 6 body views, R the resolution."""

    normals: np.ndarray  # (V, 3, R, R) uint8
    colours: np.ndarray  # (V, 3, R, R) uint8
    masks: np.ndarray  # (V, 1, R, R) uint8 0/1
    joints: np.ndarray  # (23, 3) float32 world metres
    center: np.ndarray  # (3,) float32 metres
    scale: np.ndarray  # () float32 normalised units per metre
    body_pose: np.ndarray  # (63,) float32
    global_orient: np.ndarray  # (3,) float32
    palette: np.ndarray  # (5, 3) float32 (zeros for scans)


def _to_uint8(images: Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 (rounded)."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _pose_set(config: RenderConfig) -> PoseSequence:
    if config.motion is None:
        return concatenate(default_pose_sequences())[0]
    from drpose.motion.load import load_motion

    return load_motion(config.motion)


def select_render_poses(config: RenderConfig) -> PoseSequence:
    """The N poses: farthest point sampling over the pose set's selection features."""
    poses = _pose_set(config)
    if len(poses) < config.num_poses:
        raise ValueError(f"num_poses={config.num_poses} but the pose set has {len(poses)} rows")
    picks = farthest_point_sampling(pose_features(poses), config.num_poses)
    return poses.take(picks)


def camera_light(light: tuple[float, float, float]) -> Tensor:
    """(V, 3) world direction towards the light of each body view, for a direction given in the
    camera frame (x right, y up, z towards the camera)."""
    rotation = cameras.camera_from_normalized()[:, :3, :3]  # rows: right, up, back
    direction = torch.nn.functional.normalize(torch.tensor(light, dtype=torch.float32), dim=0)
    return torch.einsum("vij,i->vj", rotation, direction)


def _scan_renders(config: RenderConfig) -> Iterator[RenderedSample]:
    model = load_smplx(config.model_dir)
    lights = camera_light(config.light)
    if config.scans is not None:
        samples = scans.subject_meshes(config.scans, model, fits=config.fits)
    else:
        poses = select_render_poses(config)
        samples = scans.reposed_meshes(config.mesh, model, poses.body_pose, poses.global_orient,
                                       fit_steps=config.fit_steps, seed=config.seed)
    for sample in samples:
        views = scans.render_scan(sample.mesh, config.resolution, lights, config.ambient)
        yield RenderedSample(
            normals=_to_uint8(views.normals), colours=_to_uint8(views.colours),
            masks=views.masks.to(torch.uint8).numpy(),
            joints=sample.joints.float().numpy(),
            center=views.normalization.center[0].float().numpy(),
            scale=views.normalization.scale[0].float().numpy(),
            body_pose=np.asarray(sample.body_pose, np.float32),
            global_orient=np.asarray(sample.global_orient, np.float32),
            palette=np.zeros((5, 3), np.float32))


@torch.no_grad()
def build_renders(config: RenderConfig) -> Iterator[RenderedSample]:
    """Pose, select and render N samples, yielded one at a time (about 0.3 s per sample at
    R = 64 on 2 cores)."""
    if config.scans is not None or config.mesh is not None:
        yield from _scan_renders(config)
        return
    poses = select_render_poses(config)
    model = load_smplx(config.model_dir)
    faces = model.faces_tensor.to(torch.int32).contiguous()
    template = model.v_template.detach().float()
    rest_joints = model.J_regressor.detach().float() @ template
    regions = vertex_regions(model.lbs_weights.detach(), template, rest_joints)
    face_regions = regions[faces[:, 0].long()]
    body = posed_body(model, torch.from_numpy(poses.body_pose),
                      torch.from_numpy(poses.global_orient))
    norm = cameras.normalize_body(body.vertices)
    matrices = cameras.rows_top_down(cameras.world_to_clip(norm))  # (N, V, 4, 4), rows down
    normals_world = vertex_normals(body.vertices, body.faces).float()
    lights = camera_light(config.light)  # (V, 3)
    size = (config.resolution, config.resolution)
    joints = body.joints[:, list(POSESCORE_JOINTS.indices)].float()
    for i in range(len(poses)):
        palette = Palette.random(config.seed * 100003 + i)
        colours = torch.from_numpy(palette.colours)
        part = face_regions.clone()
        part[part == -1] = 2 if palette.long_sleeves else 0  # TOP / SKIN
        part[part == -2] = 3 if palette.long_trousers else 0  # BOTTOM / SKIN
        albedo_faces = colours[part]  # (F, 3)
        pos = cameras.transform_points(body.vertices[i:i + 1], matrices[i:i + 1])[0]
        rast = rasterize(pos.float().contiguous(), faces, size)
        mask = (rast[..., 3:] > 0).float()  # (V, R, R, 1)
        n = interpolate(normals_world[i:i + 1], rast, faces)
        n = torch.nn.functional.normalize(n, dim=-1) * mask
        face_index = (rast[..., 3].round().long() - 1).clamp(min=0)
        colour = scans.lambert(albedo_faces[face_index], n, mask, lights, config.ambient)
        mask = mask.permute(0, 3, 1, 2)
        yield RenderedSample(
            normals=_to_uint8(encode_normals(n.permute(0, 3, 1, 2), mask)),
            colours=_to_uint8(colour.permute(0, 3, 1, 2)),
            masks=mask.to(torch.uint8).numpy(),
            joints=joints[i].numpy(), center=norm.center[i].float().numpy(),
            scale=norm.scale[i].float().numpy(),
            body_pose=poses.body_pose[i].astype(np.float32),
            global_orient=poses.global_orient[i].astype(np.float32),
            palette=palette.colours.astype(np.float32))


def _meta(config: RenderConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "config": asdict(config)}


def sample_file(folder: str | Path, index: int) -> Path:
    """Where sample ``index``'s images are in a renders folder."""
    return Path(folder) / SAMPLES_DIR / f"{index:06d}.npz"


def save_renders(samples: Iterable[RenderedSample], config: RenderConfig, folder: str | Path,
                 *, show_progress: bool = True) -> Path:
    """Write each sample's images as it comes (``samples/NNNNNN.npz``), then ``arrays.npz`` and
    last ``meta.json``, which marks a complete folder: an interrupted write leaves no
    ``meta.json``, and the next :func:`load_or_build` builds again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    (folder / "renders.npz").unlink(missing_ok=True)  # format 1
    shutil.rmtree(folder / SAMPLES_DIR, ignore_errors=True)
    (folder / SAMPLES_DIR).mkdir()
    small: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(RenderedSample)
                                          if f.name not in IMAGE_ARRAYS}
    count = config.num_poses if config.scans is None else None
    for i, sample in enumerate(progress(samples, enabled=show_progress, total=count,
                                        desc=f"renders at {config.resolution} px")):
        target = sample_file(folder, i)
        tmp = target.with_name(f".{target.stem}.tmp.npz")
        np.savez_compressed(tmp, **{name: getattr(sample, name) for name in IMAGE_ARRAYS})
        tmp.replace(target)
        for name, values in small.items():
            values.append(getattr(sample, name))
    if not small["joints"]:
        raise ValueError(f"no samples to render for {folder} (an empty scan folder?)")
    tmp = folder / f".{ARRAYS_FILE}.tmp.npz"
    np.savez(tmp, **{name: np.stack(values) for name, values in small.items()})
    tmp.replace(folder / ARRAYS_FILE)
    (folder / META_FILE).write_text(json.dumps(_meta(config), indent=1))
    return folder


def load_or_build(folder: str | Path, config: RenderConfig | None = None, *,
                  show_progress: bool = True) -> MultiViewRenders:
    """The renders cached in ``folder``; built (and cached) when missing, of an older format or
    made with another config. ``config=None`` loads whatever the folder holds (defaults when
    empty)."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        stored = RenderConfig(**{**meta["config"], "light": tuple(meta["config"]["light"])})
        if meta.get("format_version") == FORMAT_VERSION and config in (None, stored):
            return MultiViewRenders.load(folder)
        config = config or stored
    config = config or RenderConfig()
    save_renders(build_renders(config), config, folder, show_progress=show_progress)
    return MultiViewRenders.load(folder)


class SampleImages:
    """One image array of a renders folder, ``(N, V, C, R, R)`` uint8, read from the samples'
    files when indexed (nothing is held in memory).

    ``images[index]`` takes what a tensor takes for its first dimension (an int, a slice, an
    index or boolean tensor or array), optionally followed by indices of the other dimensions
    (``images[rows, :, 0]``), and returns a uint8 tensor. ``rows`` maps this array's samples to
    the folder's (a split).
    """

    def __init__(self, folder: Path, name: str, rows: np.ndarray, shape: tuple[int, ...]) -> None:
        self.folder, self.name, self.rows = folder, name, rows
        self.shape = torch.Size((len(rows), *shape))

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, row: int) -> np.ndarray:
        """The images of the folder's sample ``row``."""
        path = sample_file(self.folder, int(row))
        try:
            with np.load(path) as data:
                return data[self.name]
        except (OSError, KeyError, ValueError) as error:
            raise OSError(f"{path}: cannot read the renders' {self.name} ({error}); rebuild "
                          "the folder (python -m drpose.data renders --out ...)") from error

    def __getitem__(self, index) -> Tensor:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, Tensor):
            first = first.cpu().numpy()
        picked = self.rows[first]
        if np.ndim(picked) == 0:
            return torch.from_numpy(self.read(picked))[rest]
        stacked = np.stack([self.read(row) for row in picked]) if len(picked) else \
            np.zeros((0, *self.shape[1:]), np.uint8)
        return torch.from_numpy(stacked)[(slice(None), *rest)]


class MultiViewRenders(Dataset):
    """The renders of a folder as a torch Dataset (float images in [0, 1], read per sample).

    ``dataset[i]`` is a dict: ``image`` (3, R, R) the input view's colour image, ``normals`` and
    ``colours`` (V, 3, R, R), ``masks`` (V, 1, R, R), ``joints`` (23, 3) world metres, ``center``
    (3,), ``scale`` () (the :class:`~drpose.render.cameras.BodyNormalization` of the sample).
    ``split="train" | "eval" | "all"`` selects the samples (see ``RenderConfig.held_out``).
    ``normals``, ``colours`` and ``masks`` are :class:`SampleImages` (uint8, read from disk when
    indexed); ``joints``, ``center`` and ``scale`` are tensors in memory.
    """

    def __init__(self, folder: str | Path, config: RenderConfig, split: str = "all") -> None:
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
        self.folder, self.config, self.split = Path(folder), config, split
        with np.load(self.folder / ARRAYS_FILE) as data:
            arrays = {name: data[name] for name in ("joints", "center", "scale")}
        index = np.arange(arrays["joints"].shape[0])
        held = (index % config.held_out) == config.held_out - 1
        keep = {"train": ~held, "eval": held, "all": np.ones_like(held)}[split]
        self.indices = index[keep]
        for name, values in arrays.items():
            setattr(self, name, torch.from_numpy(values[keep]))
        side = config.resolution
        for name in IMAGE_ARRAYS:
            channels = 1 if name == "masks" else 3
            setattr(self, name, SampleImages(self.folder, name, self.indices,
                                             (NUM_VIEWS, channels, side, side)))

    @classmethod
    def load(cls, folder: str | Path, split: str = "all") -> MultiViewRenders:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} missing: build the renders with "
                                    "drpose.data.multiview.load_or_build(folder)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder} holds renders of format {meta.get('format_version')}, "
                             f"this version reads format {FORMAT_VERSION}: rebuild them with "
                             "drpose.data.multiview.load_or_build(folder)")
        config = RenderConfig(**{**meta["config"], "light": tuple(meta["config"]["light"])})
        return cls(folder, config, split)

    def subset(self, split: str) -> MultiViewRenders:
        """The same renders restricted to ``split`` (this dataset must hold them all)."""
        if self.split != "all":
            raise ValueError("subset() needs a dataset loaded with split='all'")
        return MultiViewRenders(self.folder, self.config, split)

    def __len__(self) -> int:
        return int(self.joints.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images(i), "normals": self.normals[i].float() / 255,
                "colours": self.colours[i].float() / 255, "masks": self.masks[i].float(),
                "joints": self.joints[i], "center": self.center[i], "scale": self.scale[i]}

    def images(self, index: int | slice | Tensor = slice(None)) -> Tensor:
        """Input images ``(..., 3, R, R)`` float in [0, 1] (the ``input_view`` colour view)."""
        return self.colours[index, self.config.input_view].float() / 255

    def views(self, index: int | slice | Tensor = slice(None)) -> tuple[Tensor, Tensor]:
        """(normals, colours) ``(..., V, 3, R, R)`` float in [0, 1]."""
        return self.normals[index].float() / 255, self.colours[index].float() / 255

    def normalization(self, index: int | slice | Tensor = slice(None)) -> cameras.BodyNormalization:
        """How the selected samples' bodies sit in the view box."""
        center, scale = self.center[index], self.scale[index]
        if center.dim() == 1:
            center, scale = center[None], scale[None]
        return cameras.BodyNormalization(center=center, scale=scale)

    def normalized_joints(self, index: int | slice | Tensor = slice(None)) -> Tensor:
        """Joints in normalised body coordinates ``(..., 23, 3)`` (what PoseScore takes when
        given no normalisation)."""
        joints = self.joints[index]
        single = joints.dim() == 2
        out = self.normalization(index).apply(joints[None] if single else joints)
        return out[0] if single else out

    def keypoints(self, size: tuple[int, int],
                  index: int | slice | Tensor = slice(None)) -> tuple[Tensor, Tensor]:
        """Joints projected into the 6 views at heatmap ``size``: keypoints (B, V, 23, 2) pixels,
        visible (B, V, 23) (inside the frame)."""
        joints = self.joints[index]
        if joints.dim() == 2:
            joints = joints[None]
        return cameras.project_joints(joints, None, size, normalization=self.normalization(index))
