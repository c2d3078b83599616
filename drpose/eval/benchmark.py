"""The MixamoRP-style benchmark: build posed ground-truth humans, then run and score models.

Build (:func:`build_benchmark`): rigged assets (glTF 2.0 skins, :mod:`drpose.eval.assets`; or,
the free default, the SMPL-X body, licensed or stand-in, in a per-case random palette of
:mod:`drpose.data.synth`) x poses (SMPL-X parameter files or BVH through
:func:`drpose.motion.load.load_motion`; default: the bundled CMU clips). ``count`` distinct hard
poses are chosen by farthest point sampling (:mod:`drpose.motion.select`) over the pose features
among the hardest half of the poses (those farthest from the rest pose), starting from the
hardest; case i takes pose i and asset ``i mod len(assets)`` (the paper: 60 scans, one
distinct Mixamo pose each). Per case, in ``cases/<id>/``:

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
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from drpose._progress import progress as progress_bar
from drpose.body import load_smplx, posed_body, resolve_model_dir
from drpose.data.synth import Palette, RenderSynthesizer
from drpose.eval.assets import NUM_BODY_JOINTS, RiggedAsset, load_gltf_asset
from drpose.motion.load import default_pose_sequences, load_motion
from drpose.motion.select import farthest_point_sampling, pose_features
from drpose.motion.sequence import PoseSequence, concatenate
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
    seed: palette seed of the default body (case i uses ``seed + i``); hard_fraction: poses are
    chosen among this fraction of the rows farthest from the rest pose (:func:`select_hard_poses`:
    a benchmark of hard poses has no near-T-pose case)."""

    count: int = 6
    resolution: int = 768
    seed: int = 0
    hard_fraction: float = 0.5


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: str | Path, value: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    _atomic_write_bytes(Path(path), (json.dumps(value, indent=2) + "\n").encode())


def load_poses(paths: list[str | Path] | None) -> tuple[PoseSequence, list[str]]:
    """All frames of the given motion files (:func:`drpose.motion.load.load_motion`: .npz
    SMPL-X / AMASS, .npy Motion-X, .bvh fitted), or of the bundled clips when ``paths`` is
    empty or None, as one sequence, and the source clip of every row."""
    sequences = ([load_motion(p) for p in paths] if paths else default_pose_sequences())
    merged, clip_ids = concatenate(sequences)
    return merged, [sequences[c].source for c in clip_ids]


def select_hard_poses(poses: PoseSequence, count: int, hard_fraction: float = 1.0
                      ) -> np.ndarray:
    """(count,) distinct rows of ``poses``: the hardest ``hard_fraction`` of the rows (largest
    :func:`~drpose.motion.select.pose_features` distance from the rest pose, all body joint
    angles zero) are the candidates; among them, farthest point sampling starting at the row
    farthest from the rest pose."""
    if not 0 < hard_fraction <= 1:
        raise ValueError(f"hard_fraction must be in (0, 1], got {hard_fraction}")
    features = pose_features(poses)
    rest = PoseSequence(global_orient=np.zeros((1, 3)), body_pose=np.zeros((1, 63)),
                        transl=np.zeros((1, 3)), betas=np.zeros((1, 10)), fps=1.0, source="rest")
    hardness = np.linalg.norm(features - pose_features(rest), axis=1)
    keep = max(1, round(hard_fraction * len(poses)))
    candidates = np.argsort(-hardness, kind="stable")[:keep]
    if count > len(candidates):
        raise ValueError(f"count={count} exceeds the {len(candidates)} hardest poses "
                         f"(hard_fraction={hard_fraction} of {len(poses)}); lower count or "
                         "raise hard_fraction")
    return candidates[farthest_point_sampling(features[candidates], count, first=0)]


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
    rows = select_hard_poses(sequence, config.count, config.hard_fraction)
    synth = RenderSynthesizer(config.resolution, model_dir=model_dir)
    model = load_smplx(model_dir) if not rigged else None
    root = Path(out)
    cases = []
    for i, row in enumerate(progress_bar(rows, desc="build", enabled=progress)):
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


# ---- running and scoring ----------------------------------------------------------------------


@dataclass
class Reconstruction:
    """What a model produced for one case, in the front view's box units (the normalised
    coordinates of the input image: ``p_box = (p_world - center) * scale``).

    mesh: the reconstructed surface. joints: (22, 3) SMPL-X body joints of the fitted body, or
    None. views: (6, 3, H, W) generated colour views in [0, 1] (network convention, views 3 and
    4 mirrored), or None.
    """

    mesh: trimesh.Trimesh
    joints: np.ndarray | None = None
    views: Tensor | None = None


Reconstructor = Callable[[Tensor, Tensor], Reconstruction]
"""``reconstruct(image (3, R, R) in [0, 1] on white, mask (1, R, R)) -> Reconstruction``."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: ``pipeline`` a MultiViewPipeline folder, ``"default"`` (the
    pretrained tiny pipeline of ``python -m drpose.train``) or ``"tiny"`` (random-init tiny
    components, for tests); ``lora``: a training run's LoRA folder (``trainable.safetensors``);
    ``name`` labels its rows (:func:`drpose.infer.load_pipeline`)."""

    name: str
    pipeline: str
    lora: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``[NAME=]PIPELINE[+LORA]``; the name defaults to the folder's (or LoRA's) name."""
        name, _, rest = text.rpartition("=")
        pipeline, _, lora = rest.partition("+")
        label = name or Path(lora or pipeline).name
        return cls(name=label, pipeline=pipeline, lora=lora or None)


@dataclass(frozen=True)
class RunConfig:
    """align: alignment of predictions to the ground truth before the surface and normal
    metrics (:mod:`drpose.eval.metrics`; predictions are first mapped from box units to world
    metres with the case's front-view normalisation, which the input image determines up to
    depth); n_points: surface samples; normal_size: normal image side; worst: cases shown in
    ``worst_cases.png``; steps, guidance: DDIM steps and CFG scale (PSHuman: 40, 3); seed: of
    the generation noise and the surface sampling; device: where the pipelines generate (None:
    CUDA when there is a GPU, else the CPU)."""

    align: str = "bbox"
    n_points: int = 100_000
    normal_size: int = 512
    worst: int = 3
    steps: int = 40
    guidance: float = 3.0
    seed: int = 0
    device: str | None = None


METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chamfer_cm", "Chamfer (cm) ↓"), ("p2s_cm", "P2S (cm) ↓"), ("normal_error", "Normal ↓"),
    ("pa_mpjpe_mm", "PA-MPJPE (mm) ↓"), ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"))


@dataclass
class Case:
    """A benchmark case read from disk (see the module docstring)."""

    id: str
    image: Tensor
    mask: Tensor
    gt: trimesh.Trimesh
    joints: np.ndarray
    normalization: cameras.BodyNormalization


def load_case(bench: str | Path, entry: dict[str, Any]) -> Case:
    root = Path(bench)
    files = entry["files"]
    image = torch.from_numpy(np.asarray(Image.open(root / files["image"]).convert("RGB"),
                                        dtype=np.float32) / 255).permute(2, 0, 1)
    mask = torch.from_numpy(np.asarray(Image.open(root / files["mask"]).convert("L"),
                                       dtype=np.float32) / 255)[None]
    with np.load(root / files["smplx"]) as data:
        joints = data["joints"]
        norm = cameras.BodyNormalization(
            center=torch.from_numpy(data["camera_center"]).double()[None],
            scale=torch.from_numpy(np.atleast_1d(data["camera_scale"])).double())
    gt = trimesh.load(root / files["mesh"], force="mesh", process=False)
    return Case(id=entry["id"], image=image, mask=mask, gt=gt, joints=joints,
                normalization=norm)


def box_to_world(points: np.ndarray, normalization: cameras.BodyNormalization) -> np.ndarray:
    """(N, 3) box units -> world metres: ``p_world = p_box / scale + center``."""
    return (points / float(normalization.scale[0])
            + normalization.center[0].numpy())


def gt_views(case: Case, size: int) -> Tensor:
    """(6, 3, size, size) the ground truth's colour views as the pipeline outputs them."""
    from drpose.recon import rig_views

    gt = case.gt
    box = torch.from_numpy(np.asarray(case.normalization.apply(
        torch.from_numpy(np.asarray(gt.vertices, np.float64))[None])[0]))
    colours = torch.from_numpy(np.asarray(gt.visual.vertex_colors)[:, :3] / 255.0)
    return rig_views(box.float(), torch.from_numpy(np.asarray(gt.faces)), colours.float(),
                     size)[1]


def score_case(case: Case, result: Reconstruction, config: RunConfig) -> dict[str, Any]:
    """Every metric of one case (module :mod:`drpose.eval.metrics`); missing ones are NaN."""
    from drpose.eval.metrics import normal_error, pa_mpjpe, surface_metrics
    from drpose.render.image_metrics import image_metrics

    pred = result.mesh.copy()
    pred.vertices = box_to_world(np.asarray(pred.vertices), case.normalization)
    row: dict[str, Any] = {"align": config.align}
    row.update({k: v for k, v in surface_metrics(pred, case.gt, n_points=config.n_points,
                                                 align=config.align, seed=config.seed).items()
                if k != "align"})
    row["normal_error"] = normal_error(pred, case.gt, size=config.normal_size,
                                       align=config.align, seed=config.seed)["normal_error"]
    row["pa_mpjpe_mm"] = row["psnr"] = row["ssim"] = float("nan")
    present = np.isfinite(case.joints).all(axis=1)
    if result.joints is not None and present.sum() >= 3:
        joints = box_to_world(result.joints, case.normalization)
        row["pa_mpjpe_mm"] = pa_mpjpe(joints[present][None],
                                      case.joints[present][None])["pa_mpjpe_mm"]
    if result.views is not None:
        reference = gt_views(case, int(result.views.shape[-1]))
        row.update(image_metrics(result.views.clamp(0, 1), reference))
    return row


def _result_path(out: Path, model: str, case_id: str) -> Path:
    return out / "cases" / model / f"{case_id}.json"


def run_benchmark(bench: str | Path, models: dict[str, Reconstructor], out: str | Path, *,
                  config: RunConfig = RunConfig(), progress: bool = False) -> list[dict[str, Any]]:
    """Reconstruct and score every case with every model; resumable.

    ``models``: name -> :data:`Reconstructor`. Each finished case writes
    ``out/cases/<model>/<case>.json`` (atomically) and ``<case>.ply`` (the mesh, box units); a
    reconstructor that raises is recorded as a failed case (NaN metrics and an ``error`` field,
    with a warning) and the run goes on. A rerun skips cases whose JSON exists (delete a failed
    case's JSON to retry it). Then writes ``results.csv``, ``results.md`` and
    ``worst_cases.png`` (:func:`write_tables`, :func:`write_worst_cases`) and returns the rows
    (one per model and case).
    """
    manifest = load_manifest(bench)
    out = Path(out)
    entries = manifest["cases"]
    jobs = [(name, entry) for name in models for entry in entries]
    rows = []
    for name, entry in progress_bar(jobs, desc="benchmark", enabled=progress):
        path = _result_path(out, name, entry["id"])
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        case = load_case(bench, entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = models[name](case.image, case.mask)
        except Exception as error:  # a model that fails on one case is scored as failed there
            row = {"model": name, "case": case.id, "align": config.align,
                   **{key: float("nan") for key, _ in METRIC_COLUMNS},
                   "error": f"{type(error).__name__}: {error}"}
            warnings.warn(f"{name} failed on {case.id}: {row['error']}", stacklevel=2)
        else:
            _atomic_write_bytes(path.with_suffix(".ply"), result.mesh.export(file_type="ply"))
            row = {"model": name, "case": case.id, **score_case(case, result, config)}
        write_json(path, row)
        rows.append(row)
    write_tables(rows, out, models=list(models), config=config)
    write_worst_cases(bench, rows, out, models=list(models), count=config.worst)
    return rows


def _fmt(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.4g}"


def write_tables(rows: list[dict[str, Any]], out: str | Path, *, models: list[str],
                 config: RunConfig) -> None:
    """``results.csv`` (one line per model and case, then one ``mean`` line per model; a failed
    case has empty metrics and its ``error``) and ``results.md``: the paper's layout (methods as
    rows, metrics as columns, means over the cases the model reconstructed, and how many it
    failed), then a per-case table (case x model rows). Means ignore NaN (metrics a model lacks,
    failed cases)."""
    import csv
    import io

    out = Path(out)
    keys = [k for k, _ in METRIC_COLUMNS]
    means, failed = {}, {}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        failed[model] = sum("error" in r for r in mine)
        means[model] = {k: (float(np.nanmean(values)) if np.isfinite(
            values := np.array([r[k] for r in mine], float)).any() else float("nan"))
            for k in keys}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["model", "case", *keys, "align", "error"])
    for r in rows:
        writer.writerow([r["model"], r["case"], *(r[k] for k in keys), r["align"],
                         r.get("error", "")])
    for model in models:
        writer.writerow([model, "mean", *(means[model][k] for k in keys), config.align,
                         f"{failed[model]} failed" if failed[model] else ""])
    _atomic_write_bytes(out / "results.csv", text.getvalue().encode())
    header = "| method | " + " | ".join(label for _, label in METRIC_COLUMNS) + " | failed |"
    rule = "|---|" + "---|" * (len(METRIC_COLUMNS) + 1)
    cases = sorted({r["case"] for r in rows})
    lines = [f"# MixamoRP-style benchmark ({len(cases)} cases)", "",
             f"Alignment before surface and normal metrics: `{config.align}` "
             f"({config.n_points} surface points, normal images {config.normal_size}²). "
             "Means are over the cases a method reconstructed.", "", header, rule]
    lines += [f"| {m} | " + " | ".join(_fmt(means[m][k]) for k in keys)
              + f" | {failed[m]} |" for m in models]
    lines += ["", "## Per case", "", header.replace("| method |", "| case | method |")
              .replace("| failed |", "| error |"), "|---" + rule]
    for case in cases:
        for r in rows:
            if r["case"] == case:
                lines.append(f"| {case} | {r['model']} | "
                             + " | ".join(_fmt(r[k]) for k in keys)
                             + f" | {r.get('error', '')} |")
    _atomic_write_bytes(out / "results.md", ("\n".join(lines) + "\n").encode())


def write_worst_cases(bench: str | Path, rows: list[dict[str, Any]], out: str | Path, *,
                      models: list[str], count: int = 3, size: int = 256) -> Path:
    """``worst_cases.png``: the ``count`` worst cases, one row each: input | ground truth | each
    model's mesh (front renders, Lambert-shaded; a grey tile where the model failed). Worst:
    cases some model failed on first, then highest Chamfer distance (mean over models)."""
    from drpose.recon import turntable
    from drpose.render.conditions import save_view_grid

    out = Path(out)
    manifest = load_manifest(bench)
    chamfer: dict[str, list[float]] = {}
    for r in rows:
        chamfer.setdefault(r["case"], []).append(np.inf if "error" in r else r["chamfer_cm"])
    worst = sorted(chamfer, key=lambda c: -np.mean(chamfer[c]))[:count]
    entries = {e["id"]: e for e in manifest["cases"]}
    tiles = []
    for case_id in worst:
        case = load_case(bench, entries[case_id])
        image = torch.nn.functional.interpolate(case.image[None], size=(size, size),
                                                mode="bilinear", antialias=True)[0]
        row = [image]
        box = case.normalization.apply(torch.from_numpy(np.asarray(case.gt.vertices))[None])[0]
        meshes = [trimesh.Trimesh(box.numpy(), case.gt.faces, process=False)]
        for model in models:
            path = _result_path(out, model, case_id).with_suffix(".ply")
            meshes.append(trimesh.load(path, force="mesh", process=False)
                          if path.is_file() else None)
        row += [torch.full((3, size, size), 0.5) if mesh is None else turntable(
            torch.from_numpy(np.asarray(mesh.vertices)).float(),
            torch.from_numpy(np.asarray(mesh.faces)), None, size, azimuths=1)[0]
            for mesh in meshes]
        tiles.append(torch.stack(row))
    return save_view_grid(torch.stack(tiles), out / "worst_cases.png")


def pipeline_reconstructor(spec: ModelSpec, config: RunConfig = RunConfig(),
                           recon: Any = None) -> Reconstructor:
    """The real :data:`Reconstructor`, exactly ``python -m drpose.infer``'s path: the model
    from :func:`drpose.infer.load_pipeline`; the case's image and mask framed and the views
    generated (:func:`drpose.infer.generate_views`), then carved
    (:func:`drpose.infer.reconstruct_views`; ``recon``: a :class:`drpose.recon.ReconConfig`,
    None: its defaults)."""
    from drpose.infer import generate_views, load_pipeline, reconstruct_views
    from drpose.recon import ReconConfig

    pipe = load_pipeline(spec.pipeline, spec.lora, seed=config.seed, device=config.device)
    body = load_smplx()
    recon = recon or ReconConfig()

    def run(image: Tensor, mask: Tensor) -> Reconstruction:
        output, framed, framed_mask = generate_views(
            pipe, image.permute(1, 2, 0).numpy(), mask[0].numpy() > 0.5, steps=config.steps,
            guidance=config.guidance, seed=config.seed)
        result = reconstruct_views(output, framed, framed_mask, body, recon)
        fit = result.fit
        with torch.no_grad():
            joints = posed_body(body, fit.body_pose, fit.global_orient, betas=fit.betas).joints
        joints = ((joints[0, :NUM_BODY_JOINTS] - fit.rest_centre) * fit.scale
                  + fit.translation)
        return Reconstruction(mesh=result.mesh, joints=joints.double().numpy(),
                              views=output.colours[0, :6].float().cpu())

    return run
