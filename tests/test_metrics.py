"""drpose.eval.metrics: known answers, the two distance libraries against each other, Procrustes
recovery, PSNR/SSIM against scikit-image, normal error, input checks."""

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from drpose.eval import metrics
from drpose.eval.metrics import (
    align_mesh,
    normal_error,
    pa_mpjpe,
    point_to_surface_distance,
    similarity_procrustes,
    surface_metrics,
)
from drpose.render import cameras
from drpose.render.image_metrics import image_metrics

has_open3d = not isinstance(metrics._open3d(), ImportError)
needs_open3d = pytest.mark.skipif(not has_open3d, reason="open3d does not import (pip install "
                                  "'drpose[eval]'; Linux also needs apt install libusb-1.0-0)")
BACKENDS = [pytest.param("open3d", marks=needs_open3d), "trimesh"]


def _similarity(scale: float, seed: int, translation=(0.3, -0.2, 0.5)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = scale * Rotation.random(random_state=seed).as_matrix()
    m[:3, 3] = translation
    return m


def _lumpy_mesh() -> trimesh.Trimesh:
    """An irregular closed mesh about a metre across (no symmetry for ICP to slip along)."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    v = mesh.vertices
    mesh.vertices = v * (1 + 0.25 * np.sin(3 * v[:, :1]) * np.cos(2 * v[:, 1:2]) + 0.1 * v[:, 2:])
    mesh.vertices[:, 1] *= 1.8
    return mesh


# ---- surface metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_concentric_spheres_chamfer_is_one_cm(backend):
    inner = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    outer = trimesh.creation.icosphere(subdivisions=4, radius=1.01)
    out = surface_metrics(outer, inner, n_points=5000, backend=backend)
    # inner samples -> outer surface: 0.01 x (distance of the face's plane from the centre)
    plane = np.einsum("fi,fi->f", inner.triangles_center, inner.face_normals)
    expected_cm = 0.01 * np.average(plane, weights=inner.area_faces) * 100
    assert out["p2s_cm"] == out["gt_to_pred_cm"]
    assert abs(out["gt_to_pred_cm"] - expected_cm) < 2e-3 * expected_cm
    assert abs(out["pred_to_gt_cm"] - expected_cm) < 5e-3 * expected_cm
    assert abs(out["chamfer_cm"] - 1.0) < 0.01
    assert out["align"] == "none"


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_meshes_are_zero(backend):
    mesh = _lumpy_mesh()
    out = surface_metrics(mesh, mesh.copy(), n_points=3000, seed=3, backend=backend)
    assert out["chamfer_cm"] < 1e-4 and out["p2s_cm"] < 1e-4


def test_translated_cube_known_answer():
    # unit cube vs the same moved 0.1 m along x: per direction the mean distance is
    # (0.1 [far x face] + (1 - 0.8^3) / 6 [near x face, inside] + 4 x 0.1^2 / 2 [side faces]) / 6
    gt = trimesh.creation.box()
    pred = gt.copy().apply_translation([0.1, 0.0, 0.0])
    expected_cm = (0.1 + (1 - 0.8**3) / 6 + 4 * 0.1**2 / 2) / 6 * 100
    out = surface_metrics(pred, gt, n_points=100_000, seed=1)
    # standard error of a 100K-sample mean of distances spread over [0, 0.1] m: ~0.013 cm
    for key in ("chamfer_cm", "p2s_cm", "pred_to_gt_cm"):
        assert abs(out[key] - expected_cm) < 0.05, (key, out[key], expected_cm)


@needs_open3d
def test_distance_libraries_agree():
    mesh = _lumpy_mesh()
    rng = np.random.default_rng(0)
    lo, hi = mesh.bounds
    near, _ = trimesh.sample.sample_surface(mesh, 2000, seed=rng)
    points = np.concatenate([
        near + rng.normal(scale=0.02, size=near.shape),  # both sides of the surface
        rng.uniform(lo - 0.2, hi + 0.2, size=(1000, 3)),  # anywhere around it
    ])
    d_open3d = point_to_surface_distance(points, mesh, backend="open3d")
    d_trimesh = point_to_surface_distance(points, mesh, backend="trimesh")
    np.testing.assert_allclose(d_open3d, d_trimesh, rtol=0, atol=1e-6)
    assert d_trimesh.max() > 0.1  # the far points are really far


def test_bbox_alignment_undoes_scale_and_translation():
    gt = _lumpy_mesh()
    pred = gt.copy().apply_scale(1.3).apply_translation([0.4, -0.1, 0.2])
    assert surface_metrics(pred, gt, n_points=2000)["chamfer_cm"] > 5
    out = surface_metrics(pred, gt, n_points=2000, align="bbox")
    assert out["align"] == "bbox" and out["chamfer_cm"] < 1e-3
    np.testing.assert_allclose(align_mesh(pred, gt, "bbox").vertices, gt.vertices, atol=1e-12)


def test_icp_alignment_undoes_a_similarity_transform():
    gt = _lumpy_mesh()
    m = np.eye(4)
    m[:3, :3] = 1.2 * Rotation.from_euler("xyz", [8, -12, 5], degrees=True).as_matrix()
    m[:3, 3] = [0.3, 0.1, -0.2]
    pred = gt.copy().apply_transform(m)
    assert surface_metrics(pred, gt, n_points=2000, align="bbox")["chamfer_cm"] > 1
    out = surface_metrics(pred, gt, n_points=2000, align="icp")
    assert out["align"] == "icp" and out["chamfer_cm"] < 0.05
    assert align_mesh(pred, gt, "none") is pred


# ---- joints ------------------------------------------------------------------------------------


def test_procrustes_recovers_a_similarity_transform():
    rng = np.random.default_rng(0)
    gt = rng.normal(scale=0.4, size=(4, 24, 3))
    pred = np.stack([gt[i] @ _similarity(0.5 + i, i)[:3, :3].T + _similarity(0.5 + i, i)[:3, 3]
                     for i in range(4)])
    out = pa_mpjpe(torch.from_numpy(pred), torch.from_numpy(gt))
    assert out["mpjpe_mm"] > 100
    assert out["pa_mpjpe_mm"] < 1e-9
    scale, rotation, _ = similarity_procrustes(pred, gt)
    np.testing.assert_allclose(scale, 1 / (0.5 + np.arange(4)), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, rtol=1e-12)


def test_procrustes_allows_no_reflection():
    gt = np.random.default_rng(1).normal(size=(1, 17, 3))
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    _, rotation, _ = similarity_procrustes(mirrored, gt)
    assert np.linalg.det(rotation[0]) == pytest.approx(1.0)
    assert pa_mpjpe(mirrored, gt)["pa_mpjpe_mm"] > 100


def test_mpjpe_known_answer():
    gt = np.zeros((2, 3, 3))
    gt[:, 1, 0] = gt[:, 2, 1] = 1.0
    pred = gt + np.array([0.0, 0.003, 0.004])  # every joint 5 mm off; a pure translation
    out = pa_mpjpe(pred, gt)
    assert out["mpjpe_mm"] == pytest.approx(5.0, rel=1e-12)
    assert out["pa_mpjpe_mm"] < 1e-9


# ---- images ------------------------------------------------------------------------------------


def test_psnr_known_answer():
    gt = torch.zeros(2, 3, 16, 16)
    out = image_metrics(gt + 0.1, gt)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-5)  # MSE 0.01 (0.1 in float32)
    same = image_metrics(gt, gt)
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_scikit_image():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    rng = np.random.default_rng(0)
    gt = rng.uniform(size=(2, 3, 37, 45))
    pred = np.clip(gt + rng.normal(scale=0.1, size=gt.shape), 0, 1)
    expected = np.mean([structural_similarity(
        pred[i], gt[i], channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False) for i in range(2)])
    assert image_metrics(pred, gt)["ssim"] == pytest.approx(expected, abs=1e-12)


# ---- normals -----------------------------------------------------------------------------------


def test_normal_error_identical_and_rotated():
    gt = _lumpy_mesh()
    assert normal_error(gt, gt.copy(), size=64) == {"normal_error": 0.0, "align": "none"}
    rotated = gt.copy().apply_transform(
        trimesh.transformations.rotation_matrix(np.radians(30), [0, 0, 1]))
    error = normal_error(rotated, gt, size=64)["normal_error"]
    assert 0.05 < error < 4
    assert normal_error(rotated, gt, size=64, views=1)["normal_error"] > 0.05
    # ICP undoes the rotation: only rasterization noise of the resampled surface is left
    assert normal_error(rotated, gt, size=64, align="icp")["normal_error"] < 1e-4


def test_normal_error_counts_uncovered_pixels_as_one():
    # the unit box fills a centred square of side 1/sqrt(3) (training normalisation: diagonal 1)
    # in every view; a prediction moved out of view leaves |n_gt|^2 = 1 on exactly those pixels
    gt = trimesh.creation.box()
    size = 64
    centres = (2 * np.arange(size) + 1) / size - 1  # NDC pixel centres; the box spans +-1/sqrt 3
    inside = np.count_nonzero(np.abs(centres) <= 1 / np.sqrt(3))
    away = gt.copy().apply_translation([10.0, 0.0, 0.0])
    error = normal_error(away, gt, size=size)["normal_error"]
    assert error == pytest.approx((inside / size) ** 2, rel=1e-6)


# ---- input checks ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    good = trimesh.creation.box()
    empty = trimesh.Trimesh()
    with pytest.raises(ValueError, match="pred is empty"):
        surface_metrics(empty, good)
    with pytest.raises(TypeError, match="force='mesh'"):
        surface_metrics(trimesh.Scene(good), good)
    nan = good.copy()
    nan.vertices[0, 0] = np.nan
    with pytest.raises(ValueError, match="gt has non-finite"):
        normal_error(good, nan)
    with pytest.raises(ValueError, match="align must be one of"):
        surface_metrics(good, good, align="procrustes")
    with pytest.raises(ValueError, match="views must be one of"):
        normal_error(good, good, views=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        surface_metrics(good, good, n_points=10, backend="embree")
    joints = np.zeros((2, 5, 3))
    joints[:, :, 0] = np.arange(5)
    with pytest.raises(ValueError, match="gt must have pred's shape"):
        pa_mpjpe(joints, joints[:, :4])
    bad = joints.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        pa_mpjpe(bad, joints)
    with pytest.raises(ValueError, match="zero spread"):
        pa_mpjpe(np.zeros((1, 5, 3)), joints[:1])
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        image_metrics(images * 255, images)
    with pytest.raises(ValueError, match="at least 11"):
        image_metrics(images[..., :8], images[..., :8])
    with pytest.raises(ValueError, match="gt must have pred's shape"):
        image_metrics(images, images[:, :2])


def test_rendered_normals_match_ray_casting():
    """render_normals against an independent renderer: embree rays through the pixel centres
    of the front (azimuth 0) and right (azimuth 90) cameras, face normals of the hit triangles."""
    mesh = _lumpy_mesh()  # asymmetric in x: a flipped image would not match
    size = 48
    vertices = torch.from_numpy(mesh.vertices)[None]
    norm = cameras.normalize_body(vertices, mode="training")
    rendered = metrics.render_normals(mesh, norm, [0, 2], size).double()  # (2, 3, H, W)
    ndc = (2 * np.arange(size) + 1) / size - 1
    x_ndc, y_ndc = np.meshgrid(ndc, -ndc)  # rows top-down: y decreases down the image
    scale, centre = norm.scale.item(), norm.center[0].numpy()
    for view, azimuth in ((0, 0.0), (1, np.pi / 2)):
        right = np.array([np.cos(azimuth), 0.0, -np.sin(azimuth)])
        back = np.array([np.sin(azimuth), 0.0, np.cos(azimuth)])
        offset = (x_ndc[..., None] * right + y_ndc[..., None] * np.array([0.0, 1.0, 0.0]))
        origins = centre + offset.reshape(-1, 3) * cameras.ORTHO_SCALE / 2 / scale + 10 * back
        tri, ray, _ = mesh.ray.intersects_id(origins, np.tile(-back, (len(origins), 1)),
                                             multiple_hits=False, return_locations=True)
        expected = np.zeros((size * size, 3))
        expected[ray] = mesh.face_normals[tri]
        got = rendered[view].permute(1, 2, 0).reshape(-1, 3).numpy()
        covered_got, covered_expected = got.any(axis=1), expected.any(axis=1)
        assert (covered_got != covered_expected).mean() < 0.01  # silhouette edge pixels only
        both = covered_got & covered_expected
        # interpolated vertex normals vs flat face normals of a 1280-face mesh: a few degrees
        cosine = (got[both] * expected[both]).sum(axis=1)
        assert np.median(cosine) > 0.995 and cosine.min() > 0.8


def test_without_open3d_auto_falls_back_to_trimesh(monkeypatch):
    monkeypatch.setattr(metrics, "_open3d", lambda: ImportError("libusb-1.0.so.0: missing"))
    metrics._warn_no_open3d.cache_clear()
    box = trimesh.creation.box()
    with pytest.warns(RuntimeWarning, match="libusb-1.0-0"):
        out = surface_metrics(box, box.copy().apply_translation([0.01, 0, 0]), n_points=500)
    assert 0 < out["chamfer_cm"] < 1
    with pytest.raises(ImportError, match=r"drpose\[eval\]"):
        point_to_surface_distance(np.zeros((1, 3)), box, backend="open3d")
    metrics._warn_no_open3d.cache_clear()
