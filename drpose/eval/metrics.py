"""The field's metrics for single-image 3D humans (ICON / ECON lineage), in one place.

Surfaces (:func:`surface_metrics`), in centimetres of metre-unit meshes:

* ``n_points`` points are sampled uniformly by area on each surface (independent seeded draws).
* Point-to-surface distances (Euclidean, not squared) to the other *surface* (the exact closest
  point on its triangles, not the nearest sample).
* ``p2s_cm``: mean distance of the ground-truth samples to the predicted surface (this project's
  definition; some code bases report the other direction, so both directions are returned as
  ``gt_to_pred_cm`` and ``pred_to_gt_cm``); ``chamfer_cm``: the mean of the two directions.
* Distance queries: open3d's ``RaycastingScene`` (``backend="open3d"``, float32, multi-threaded;
  the default when open3d imports) or trimesh's ``proximity.closest_point`` (``backend="trimesh"``,
  float64, R-tree of triangles; slower). The tests check that the two agree.

Normals (:func:`normal_error`): both meshes rendered with :func:`drpose.ops.rasterize` from the
rig's orthographic cameras (:mod:`drpose.render.cameras`) at azimuths 0/90/180/270 (ICON's four
views, unmirrored), both placed in the view box by the *ground truth's* normalisation (bounding
box centre, diagonal = 1). Each pixel holds the interpolated, renormalised area-weighted vertex
normal in world coordinates (the difference of two normals does not depend on the frame), and
the zero vector where the mesh does not cover the pixel centre. The error is the mean over views
and over ALL pixels of the squared difference ``||n_pred - n_gt||^2`` in [-1, 1] units (range
[0, 4]; a pixel covered by one mesh only counts 1). Divide by 4 for the ICON-style error of
normal colours ``(n + 1) / 2``. Faces must be counter-clockwise seen from outside
(``mesh.fix_normals()`` makes a watertight mesh so).

Alignment of the prediction to the ground truth before surface and normal metrics
(``align=``, reported back under the key ``"align"`` of every result):

* ``"none"`` (default): the meshes as given, in the same world frame.
* ``"bbox"``: uniform scale by the ratio of bounding-box diagonals (gt / pred), then the
  prediction's bounding-box centre moved onto the ground truth's.
* ``"icp"``: ``"bbox"``, then point-to-plane iterative closest points with a similarity
  transform (scale, rotation, translation): ``ICP_SAMPLES`` samples on each surface; each
  prediction sample is paired with its nearest ground-truth sample (scipy's cKDTree), pairs
  farther than ``ICP_MAX_DISTANCE`` x the ground truth's bounding-box diagonal are dropped; each
  step solves the linearised least squares of the distances of the paired points to the ground
  truth samples' tangent planes (face normals) for a small rotation, log-scale and translation;
  stops after ``ICP_ITERATIONS`` steps or when the mean plane distance improves by less than
  ``ICP_TOLERANCE`` x the diagonal. Own implementation (point-to-plane converges in a few steps
  where point-to-point ICP crawls at the sample spacing), so ``"icp"`` works without open3d.

Joints (:func:`pa_mpjpe`): MPJPE in the inputs' frame and after a per-sample similarity
Procrustes alignment (Umeyama's solution: scale, proper rotation, translation). Images:
:func:`drpose.render.image_metrics.image_metrics` (PSNR, SSIM), which training uses too.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from torch import Tensor

from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import vertex_normals
from drpose.render.image_metrics import as_float64

Alignment = Literal["none", "bbox", "icp"]
ALIGNMENTS: tuple[str, ...] = ("none", "bbox", "icp")
DISTANCE_BACKENDS: tuple[str, ...] = ("auto", "open3d", "trimesh")
TRIMESH_CHUNK = 4096  # points per trimesh.proximity query

ICP_SAMPLES = 20_000  # points per surface used by ICP
ICP_ITERATIONS = 30
ICP_MAX_DISTANCE = 0.1  # pair rejection distance, fraction of the gt bounding-box diagonal
ICP_TOLERANCE = 1e-6  # stop when the mean plane distance improves less (fraction of diagonal)

NORMAL_VIEWS: dict[int, tuple[str, ...]] = {
    1: ("front",), 2: ("front", "back"), 4: ("front", "right", "back", "left")}

CM_PER_M = 100.0
MM_PER_M = 1000.0


# ---- input checks -----------------------------------------------------------------------------


def _check_mesh(fn: str, name: str, mesh: object) -> trimesh.Trimesh:
    if isinstance(mesh, trimesh.Scene):
        raise TypeError(f"{fn}(): {name} is a trimesh.Scene; load a single mesh with "
                        "trimesh.load(path, force='mesh')")
    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"{fn}(): {name} must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise ValueError(f"{fn}(): {name} is empty ({len(mesh.vertices)} vertices, "
                         f"{len(mesh.faces)} faces)")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"{fn}(): {name} has non-finite (NaN or inf) vertex coordinates")
    if not mesh.area > 0:
        raise ValueError(f"{fn}(): {name} has zero surface area (all faces degenerate)")
    return mesh


def _check_align(fn: str, align: str) -> None:
    if align not in ALIGNMENTS:
        raise ValueError(f"{fn}(): align must be one of {ALIGNMENTS}, got {align!r}")


# ---- similarity Procrustes (joints) ----------------------------------------------------


def similarity_procrustes(source: np.ndarray,
                          target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity transform taking ``source`` onto ``target`` (Umeyama 1991).

    source, target: (..., P, 3) float64 corresponding points. Returns scale (...,), rotation
    (..., 3, 3) (a proper rotation, det = +1: no reflection) and translation (..., 3) minimising
    ``sum_p ||s R x_p + t - y_p||^2``; apply as ``s[..., None, None] * x @ R.mT + t[..., None, :]``.
    Raises ValueError when a source point set has no spread (all points equal).
    """
    mu_s = source.mean(axis=-2, keepdims=True)
    mu_t = target.mean(axis=-2, keepdims=True)
    xs, xt = source - mu_s, target - mu_t
    var_s = (xs**2).sum(axis=(-2, -1)) / source.shape[-2]
    if not (var_s > 0).all():
        raise ValueError("similarity_procrustes(): a source point set has zero spread")
    cov = np.swapaxes(xt, -1, -2) @ xs / source.shape[-2]  # (..., 3, 3) = E[y x^T]
    u, sigma, vt = np.linalg.svd(cov)
    flip = np.ones_like(sigma)
    flip[..., 2] = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    rotation = (u * flip[..., None, :]) @ vt
    scale = (sigma * flip).sum(axis=-1) / var_s
    translation = mu_t[..., 0, :] - scale[..., None] * (rotation @ mu_s[..., 0, :, None])[..., 0]
    return scale, rotation, translation


def _similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = scale * rotation
    m[:3, 3] = translation
    return m


# ---- alignment ---------------------------------------------------------------------------------


def _sample(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=rng)
    return np.asarray(points, dtype=np.float64)


def _bbox_matrix(pred: trimesh.Trimesh, gt: trimesh.Trimesh) -> np.ndarray:
    pred_lo, pred_hi = pred.bounds
    gt_lo, gt_hi = gt.bounds
    pred_diagonal = np.linalg.norm(pred_hi - pred_lo)
    if not pred_diagonal > 0:
        raise ValueError("align='bbox': the prediction's bounding box has zero size")
    scale = np.linalg.norm(gt_hi - gt_lo) / pred_diagonal
    translation = (gt_lo + gt_hi) / 2 - scale * (pred_lo + pred_hi) / 2
    return _similarity_matrix(scale, np.eye(3), translation)


def _icp_matrix(pred_points: np.ndarray, gt_points: np.ndarray, gt_normals: np.ndarray,
                diagonal: float) -> np.ndarray:
    """Point-to-plane similarity ICP of pred_points (P, 3) onto gt samples (Q, 3) with their unit
    normals (Q, 3); returns the 4 x 4 matrix (see the module docstring)."""
    tree = cKDTree(gt_points)
    total = np.eye(4)
    current = pred_points
    previous = np.inf
    for _ in range(ICP_ITERATIONS):
        distance, index = tree.query(current, distance_upper_bound=ICP_MAX_DISTANCE * diagonal)
        keep = np.isfinite(distance)
        if keep.sum() < 7:
            raise ValueError("align='icp': fewer than 7 point pairs within "
                             f"{ICP_MAX_DISTANCE} x the bounding-box diagonal; the meshes are "
                             "too far apart for ICP (try align='bbox' to inspect)")
        p, q, n = current[keep], gt_points[index[keep]], gt_normals[index[keep]]
        centre = p.mean(axis=0)
        # residual ((1 + sigma)(I + [w]x)(p - c) + c + t - q) . n, linear in (w, sigma, t)
        rows = np.concatenate([np.cross(p - centre, n), ((p - centre) * n).sum(axis=1,
                               keepdims=True), n], axis=1)
        residual = ((q - p) * n).sum(axis=1)
        error = np.abs(residual).mean()
        if previous - error < ICP_TOLERANCE * diagonal:
            break
        previous = error
        w_sigma_t = np.linalg.lstsq(rows, residual, rcond=None)[0]
        step = _similarity_matrix(np.exp(w_sigma_t[3]),
                                  Rotation.from_rotvec(w_sigma_t[:3]).as_matrix(),
                                  np.zeros(3))
        step[:3, 3] = centre - step[:3, :3] @ centre + w_sigma_t[4:]
        current = current @ step[:3, :3].T + step[:3, 3]
        total = step @ total
    return total


def align_mesh(pred: trimesh.Trimesh, gt: trimesh.Trimesh, align: Alignment = "none", *,
               seed: int = 0) -> trimesh.Trimesh:
    """``pred`` aligned to ``gt`` by the protocol ``align`` (see the module docstring).

    Returns ``pred`` itself for ``"none"``, else a transformed copy. ``seed`` draws ICP's samples.
    """
    _check_align("align_mesh", align)
    _check_mesh("align_mesh", "pred", pred)
    _check_mesh("align_mesh", "gt", gt)
    if align == "none":
        return pred
    matrix = _bbox_matrix(pred, gt)
    if align == "icp":
        rng = np.random.default_rng(seed)
        pred_points = _sample(pred, ICP_SAMPLES, rng) @ matrix[:3, :3].T + matrix[:3, 3]
        gt_points, gt_faces = trimesh.sample.sample_surface(gt, ICP_SAMPLES, seed=rng)
        diagonal = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
        matrix = _icp_matrix(pred_points, np.asarray(gt_points, dtype=np.float64),
                             gt.face_normals[gt_faces], diagonal) @ matrix
    return pred.copy().apply_transform(matrix)


# ---- point-to-surface distances ----------------------------------------------------------------


@functools.cache
def _open3d():
    """open3d, or the ImportError saying why not (e.g. its libusb system dependency)."""
    try:
        return importlib.import_module("open3d")
    except ImportError as error:
        return error


@functools.cache
def _warn_no_open3d(reason: str) -> None:
    warnings.warn(f"drpose.eval: open3d does not import ({reason}); distances use trimesh's "
                  "proximity query, several times slower. pip install 'drpose[eval]' (Linux: "
                  "also apt install libusb-1.0-0)", RuntimeWarning, stacklevel=4)


def _resolve_distance_backend(backend: str) -> str:
    if backend not in DISTANCE_BACKENDS:
        raise ValueError(f"point_to_surface_distance(): backend must be one of "
                         f"{DISTANCE_BACKENDS}, got {backend!r}")
    o3d = _open3d()
    if backend == "auto":
        if isinstance(o3d, ImportError):
            _warn_no_open3d(str(o3d))
            return "trimesh"
        return "open3d"
    if backend == "open3d" and isinstance(o3d, ImportError):
        raise ImportError(f"backend='open3d' needs open3d: pip install 'drpose[eval]' (on Linux "
                          f"it also needs the system library libusb-1.0: apt install "
                          f"libusb-1.0-0); import failed with: {o3d}")
    return backend


def point_to_surface_distance(points: np.ndarray, mesh: trimesh.Trimesh, *,
                              backend: str = "auto") -> np.ndarray:
    """Distance (P,) float64 from each point (P, 3) to the closest point of ``mesh``'s triangles.

    Units are the inputs' (metres). ``backend``: ``"open3d"`` (RaycastingScene, float32
    arithmetic: about 1e-7 m error at metre scale), ``"trimesh"`` (trimesh.proximity, float64,
    needs rtree), ``"auto"`` (open3d when it imports, else trimesh).
    """
    backend = _resolve_distance_backend(backend)
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"point_to_surface_distance(): points must be (P, 3), got "
                         f"{points.shape}")
    if backend == "trimesh":
        # trimesh gathers candidate triangles per point in a box reaching the nearest vertex:
        # chunks bound that memory for points far from the surface
        chunks = [trimesh.proximity.closest_point(mesh, points[i:i + TRIMESH_CHUNK])[1]
                  for i in range(0, len(points), TRIMESH_CHUNK)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)
    o3d = _open3d()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)))
    distance = scene.compute_distance(o3d.core.Tensor(points.astype(np.float32)))
    return distance.numpy().astype(np.float64)


# ---- the metrics -------------------------------------------------------------------------------


def surface_metrics(pred: trimesh.Trimesh, gt: trimesh.Trimesh, *, n_points: int = 100_000,
                    seed: int = 0, align: Alignment = "none",
                    backend: str = "auto") -> dict[str, float | str]:
    """Chamfer and point-to-surface distances between a predicted and a ground-truth mesh.

    Meshes in metres; results in centimetres (see the module docstring for the protocol).
    ``n_points`` samples per surface, drawn from ``numpy.random.default_rng(seed)``.

    Returns ``{"chamfer_cm", "p2s_cm", "gt_to_pred_cm", "pred_to_gt_cm": float,
    "align": str}`` (``p2s_cm == gt_to_pred_cm``).
    """
    _check_mesh("surface_metrics", "pred", pred)
    _check_mesh("surface_metrics", "gt", gt)
    if not (isinstance(n_points, int | np.integer) and n_points > 0):
        raise ValueError(f"surface_metrics(): n_points must be a positive int, got {n_points!r}")
    pred = align_mesh(pred, gt, align, seed=seed)
    rng = np.random.default_rng(seed)
    gt_points = _sample(gt, n_points, rng)
    pred_points = _sample(pred, n_points, rng)
    gt_to_pred = point_to_surface_distance(gt_points, pred, backend=backend).mean() * CM_PER_M
    pred_to_gt = point_to_surface_distance(pred_points, gt, backend=backend).mean() * CM_PER_M
    return {"chamfer_cm": float((gt_to_pred + pred_to_gt) / 2), "p2s_cm": float(gt_to_pred),
            "gt_to_pred_cm": float(gt_to_pred), "pred_to_gt_cm": float(pred_to_gt),
            "align": align}


def _normal_views(views: int | Sequence[int | str]) -> list[int]:
    if isinstance(views, int | np.integer):
        if int(views) not in NORMAL_VIEWS:
            raise ValueError(f"normal_error(): views must be one of {sorted(NORMAL_VIEWS)} "
                             f"(ICON uses 4: azimuths 0/90/180/270) or a sequence of rig views, "
                             f"got {views!r}")
        return cameras.resolve_views(NORMAL_VIEWS[int(views)])
    return cameras.resolve_views(views)


def render_normals(mesh: trimesh.Trimesh, normalization: cameras.BodyNormalization,
                   views: Sequence[int], size: int, *, backend: str = "auto") -> Tensor:
    """(V, 3, size, size) float32 world-space unit normals of ``mesh``, 0 off the mesh.

    Orthographic rig cameras (unmirrored), rows top-down; ``normalization`` places the mesh in
    the view box (:func:`drpose.render.cameras.world_to_clip`).
    """
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)[None]
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
    tri = faces.to(torch.int32).contiguous()
    matrices = cameras.rows_top_down(cameras.world_to_clip(normalization, views, mirror=False))
    pos = cameras.transform_points(vertices, matrices)[0].float().contiguous()  # (V, N, 4)
    rast = rasterize(pos, tri, (size, size), backend=backend)
    covered = (rast[..., 3:] > 0).float()
    normals = interpolate(vertex_normals(vertices, faces).float(), rast, tri)
    normals = torch.nn.functional.normalize(normals, dim=-1) * covered
    return normals.permute(0, 3, 1, 2)


def normal_error(pred: trimesh.Trimesh, gt: trimesh.Trimesh, *,
                 views: int | Sequence[int | str] = 4, size: int = 512,
                 align: Alignment = "none", seed: int = 0,
                 backend: str = "auto") -> dict[str, float | str]:
    """Squared difference of rendered normal images (see the module docstring).

    views: 4 (ICON: azimuths 0/90/180/270), 2 (0/180), 1 (0), or a sequence of rig view indices
    or names (:func:`drpose.render.cameras.resolve_views`). size: image side in pixels.
    backend: rasterizer backend (:func:`drpose.ops.rasterize`). ``seed`` only matters for ICP.

    Returns ``{"normal_error": float in [0, 4], "align": str}``.
    """
    _check_mesh("normal_error", "pred", pred)
    _check_mesh("normal_error", "gt", gt)
    if not (isinstance(size, int | np.integer) and size > 0):
        raise ValueError(f"normal_error(): size must be a positive int, got {size!r}")
    view_ids = _normal_views(views)
    pred = align_mesh(pred, gt, align, seed=seed)
    normalization = cameras.normalize_body(
        torch.as_tensor(np.asarray(gt.vertices), dtype=torch.float64)[None], mode="training")
    pred_normals = render_normals(pred, normalization, view_ids, size, backend=backend)
    gt_normals = render_normals(gt, normalization, view_ids, size, backend=backend)
    error = (pred_normals.double() - gt_normals.double()).square().sum(dim=1).mean()
    return {"normal_error": float(error), "align": align}


def pa_mpjpe(pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> dict[str, float]:
    """Mean per-joint position error, raw and after similarity Procrustes alignment.

    pred, gt: (N, J, 3) joints in metres (torch or numpy), J >= 3. ``mpjpe_mm``: mean over
    samples and joints of ``||pred - gt||`` in the given frame (no alignment). ``pa_mpjpe_mm``:
    the same after aligning each sample's ``pred`` to its ``gt`` by :func:`similarity_procrustes`
    (scale, rotation without reflection, translation). Millimetres.
    """
    pred = as_float64("pa_mpjpe", "pred", pred)
    gt = as_float64("pa_mpjpe", "gt", gt)
    if pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape[1] < 3 or pred.shape[0] == 0:
        raise ValueError(f"pa_mpjpe(): pred must be (N > 0, J >= 3, 3), got {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"pa_mpjpe(): gt must have pred's shape {pred.shape}, got {gt.shape}")
    scale, rotation, translation = similarity_procrustes(pred, gt)
    aligned = scale[:, None, None] * pred @ np.swapaxes(rotation, -1, -2) + translation[:, None]
    return {"mpjpe_mm": float(np.linalg.norm(pred - gt, axis=-1).mean() * MM_PER_M),
            "pa_mpjpe_mm": float(np.linalg.norm(aligned - gt, axis=-1).mean() * MM_PER_M)}
