"""The MixamoRP-style benchmark: build posed ground-truth humans, then run and score models.

Build (:func:`build_benchmark`): rigged assets (glTF 2.0 skins, :mod:`drpose.eval.assets`; or,
the free default, the SMPL-X body, licensed or stand-in, in a per-case random palette of
:mod:`drpose.data.synth`) x poses (SMPL-X parameter files or BVH through
:func:`drpose.data.motion.load_motion`; default: the bundled CMU clips). ``count`` distinct hard
poses are chosen by farthest point sampling (:mod:`drpose.data.select`) over the pose features,
starting from the pose farthest from the rest pose; case i takes pose i and asset
``i mod len(assets)`` (the paper: 60 scans, one distinct Mixamo pose each). Per case, in
``cases/<id>/``:

* ``gt.ply``: the posed mesh, world metres (y up, facing +z), face colours;
* ``input.png`` / ``mask.png``: PSHuman's front view (rig view 0, orthographic, the body placed
  by ``normalize_body(mode="inference")``), Lambert-shaded as the ``render`` synthesis backend
  shades (its ambient and light), white background; the alpha mask;
* ``smplx.npz``: ``global_orient`` (3,), ``body_pose`` (63,), ``betas`` (10,) of the pose,
  ``joints`` (22, 3) SMPL-X body joints 0-21 of the ground truth in metres (NaN where a rigged
  asset has no matching joint), ``camera_center`` (3,) and ``camera_scale`` () of the front
  view's normalisation ``p_box = (p_world - center) * scale``.

``manifest.json`` (:data:`MANIFEST_FORMAT`, :data:`MANIFEST_VERSION`) lists the cases and how
they were made.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from drpose.body import load_smplx, posed_body, resolve_model_dir
from drpose.data.motion import PoseSequence, concatenate, default_pose_sequences, load_motion
from drpose.data.select import farthest_point_sampling, pose_features
from drpose.data.synth import Palette, RenderSynthesizer
from drpose.eval.assets import NUM_BODY_JOINTS, RiggedAsset, load_gltf_asset
from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import vertex_normals

MANIFEST_FORMAT = "drpose-mixamorp"
MANIFEST_VERSION = 1
FRONT_VIEW = (0,)
SMPLX_ASSET = "smplx"  # the asset name of the default body


@dataclass(frozen=True)
class BuildConfig:
    """count: cases (distinct poses); resolution: input image side in pixels (PSHuman: 768);
    seed: palette seed of the default body (case i uses ``seed + i``)."""

    count: int = 6
    resolution: int = 768
    seed: int = 0


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: str | Path, value: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    _atomic_write_bytes(Path(path), (json.dumps(value, indent=2) + "\n").encode())


def load_poses(paths: list[str | Path] | None) -> tuple[PoseSequence, list[str]]:
    """All frames of the given motion files (:func:`drpose.data.motion.load_motion`: .npz
    SMPL-X / AMASS, .npy Motion-X, .bvh fitted), or of the bundled clips when ``paths`` is
    empty or None, as one sequence, and the source clip of every row."""
    sequences = ([load_motion(p) for p in paths] if paths else default_pose_sequences())
    merged, clip_ids = concatenate(sequences)
    return merged, [sequences[c].source for c in clip_ids]


def select_hard_poses(poses: PoseSequence, count: int) -> np.ndarray:
    """(count,) distinct rows of ``poses`` by farthest point sampling over
    :func:`~drpose.data.select.pose_features`, starting at the row farthest from the rest pose
    (all body joint angles zero)."""
    features = pose_features(poses)
    rest = PoseSequence(global_orient=np.zeros((1, 3)), body_pose=np.zeros((1, 63)),
                        transl=np.zeros((1, 3)), betas=np.zeros((1, 10)), fps=1.0, source="rest")
    first = int(np.argmax(np.linalg.norm(features - pose_features(rest), axis=1)))
    return farthest_point_sampling(features, count, first=first)


@dataclass
class FrontView:
    """image (3, R, R) float32 in [0, 1] on white; mask (1, R, R) float32; the normalisation."""

    image: Tensor
    mask: Tensor
    normalization: cameras.BodyNormalization


def render_front(vertices: np.ndarray, faces: np.ndarray, face_colours: np.ndarray,
                 resolution: int, *, ambient: float, light: Tensor) -> FrontView:
    """Render a mesh in PSHuman's front view: ``(N, 3)`` world metres, ``(F, 3)`` faces,
    ``(F, 3)`` albedo in [0, 1]; shading ``albedo * (ambient + (1 - ambient) max(0, n.l))``
    with interpolated vertex normals (world frame) and ``light`` (3,) a unit direction."""
    verts = torch.as_tensor(vertices, dtype=torch.float64)[None]
    faces_t = torch.as_tensor(faces, dtype=torch.int64)
    tri = faces_t.to(torch.int32).contiguous()
    norm = cameras.normalize_body(verts, mode="inference")
    clip = cameras.rows_top_down(cameras.world_to_clip(norm, FRONT_VIEW))
    pos = cameras.transform_points(verts, clip)[:, 0].float().contiguous()
    rast = rasterize(pos, tri, (resolution, resolution))
    covered = rast[..., 3] > 0
    normals = interpolate(vertex_normals(verts, faces_t).float(), rast, tri)
    normals = torch.nn.functional.normalize(normals, dim=-1)
    face = (rast[..., 3].round().long() - 1).clamp(min=0)
    albedo = torch.as_tensor(face_colours, dtype=torch.float32)[face]  # (1, R, R, 3)
    shade = ambient + (1 - ambient) * (normals @ light).clamp(0, 1)
    image = torch.where(covered[..., None], albedo * shade[..., None], torch.ones(()))
    return FrontView(image=image[0].permute(2, 0, 1).contiguous(),
                     mask=covered.float(), normalization=norm)


def _save_png(path: Path, image: Tensor) -> None:
    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)


def build_benchmark(out: str | Path, *, assets: list[str | Path] | None = None,
                    poses: list[str | Path] | None = None,
                    config: BuildConfig = BuildConfig(),
                    model_dir: str | os.PathLike | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Build the benchmark into ``out`` (module docstring) and return the manifest.

    Args:
        out: output folder (created; existing case files are overwritten).
        assets: rigged glTF files (``.gltf``/``.glb``) or folders of them; None: the SMPL-X body.
        poses: motion files (:func:`load_poses`); None: the bundled CMU clips.
        config: :class:`BuildConfig`.
        model_dir: SMPL-X folder (default: configured or stand-in) for the default body and the
            pose features.
    """
    from tqdm import tqdm

    if config.count < 1:
        raise ValueError(f"count must be >= 1, got {config.count}")
    if config.resolution < 16:
        raise ValueError(f"resolution must be >= 16 pixels, got {config.resolution}")
    files: list[Path] = []
    for item in assets or []:
        item = Path(item)
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in (".gltf", ".glb"))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"asset {item} does not exist")
    if assets and not files:
        raise ValueError(f"no .gltf/.glb files in {[str(a) for a in assets]}")
    rigged: list[RiggedAsset] = [load_gltf_asset(f) for f in files]
    sequence, sources = load_poses(poses)
    if config.count > len(sequence):
        raise ValueError(f"count={config.count} exceeds the {len(sequence)} available poses")
    rows = select_hard_poses(sequence, config.count)
    synth = RenderSynthesizer(config.resolution, model_dir=model_dir)
    model = load_smplx(model_dir) if not rigged else None
    root = Path(out)
    cases = []
    for i, row in enumerate(tqdm(rows, desc="build", disable=not progress)):
        case_id = f"case_{i:03d}"
        folder = root / "cases" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        orient, body_pose = sequence.global_orient[row], sequence.body_pose[row]
        betas = np.zeros(10, np.float32)
        if rigged:
            asset = rigged[i % len(rigged)]
            vertices, joints = asset.pose(orient, body_pose)
            faces = asset.faces
            face_colours = asset.colours[faces].mean(axis=1)
            asset_name = asset.name
        else:
            with torch.no_grad():
                body = posed_body(model, torch.from_numpy(body_pose)[None],
                                  torch.from_numpy(orient)[None])
            vertices = body.vertices[0].double().numpy()
            joints = body.joints[0, :NUM_BODY_JOINTS].double().numpy()
            faces = body.faces.numpy()
            face_colours = synth.face_colours(Palette.random(config.seed + i)).numpy()
            asset_name = SMPLX_ASSET
        view = render_front(vertices, faces, face_colours, config.resolution,
                            ambient=synth.ambient, light=synth.light)
        rgba = np.concatenate([face_colours, np.ones((len(faces), 1))], axis=1)
        mesh = trimesh.Trimesh(vertices, faces, face_colors=(rgba * 255).round().astype(np.uint8),
                               process=False)
        _atomic_write_bytes(folder / "gt.ply", mesh.export(file_type="ply"))
        _save_png(folder / "input.png", view.image)
        _save_png(folder / "mask.png", view.mask)
        np.savez(folder / "smplx.npz", global_orient=orient, body_pose=body_pose, betas=betas,
                 joints=joints, camera_center=view.normalization.center[0].numpy(),
                 camera_scale=view.normalization.scale[0].numpy())
        cases.append({"id": case_id, "asset": asset_name,
                      "pose": {"source": sources[row], "row": int(row),
                               "frame": int(sequence.frame_ids[row])},
                      "files": {"mesh": f"cases/{case_id}/gt.ply",
                                "image": f"cases/{case_id}/input.png",
                                "mask": f"cases/{case_id}/mask.png",
                                "smplx": f"cases/{case_id}/smplx.npz"}})
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "config": asdict(config),
        "assets": [str(f) for f in files] or [SMPLX_ASSET],
        "body_model": str(resolve_model_dir(model_dir)),
        "poses": [str(p) for p in poses] if poses else "bundled CMU clips",
        "render": synth.describe(),
        "joints": "SMPL-X body joints 0-21, metres",
        "cases": cases,
    }
    write_json(root / "manifest.json", manifest)
    return manifest


def load_manifest(bench: str | Path) -> dict[str, Any]:
    """Read and check ``bench/manifest.json``."""
    path = Path(bench) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build one with "
                                "`python -m drpose.eval build --out DIR`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')}, this drpose "
                         f"reads version {MANIFEST_VERSION}; rebuild the benchmark")
    return manifest
