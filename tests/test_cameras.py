"""The PSHuman rig of drpose.render.cameras against the numbers PSHuman's code gives."""

import json
import math

import pytest
import torch
from pshuman_reference import REFERENCE as PSHUMAN

from drpose.render import cameras

REFERENCE = PSHUMAN / "pshuman_views.json"


def _box_vertices(lo, hi) -> torch.Tensor:
    corners = [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    return torch.tensor([corners], dtype=torch.float64)


@pytest.mark.skipif(not REFERENCE.exists(), reason="pshuman_views.json not available")
def test_cameras_match_pshuman_reconstruct_matrices():
    views = json.loads(REFERENCE.read_text())["generated_views_in_batch_order"][:6]
    ours = cameras.camera_from_normalized(dtype=torch.float64)
    for i, view in enumerate(views):
        assert cameras.AZIMUTHS_DEG[i] == view["azimuth_deg"]
        assert (i in cameras.MIRRORED_VIEWS) == view["generated_image_is_horizontally_mirrored"]
        expected = torch.tensor(view["w2c_opengl_yup_4x4_as_used_by_reconstruct"],
                                dtype=torch.float64)
        torch.testing.assert_close(ours[i], expected, atol=1e-6, rtol=0)


def test_front_view_orientation_and_side_views():
    # a body-sized box centred at the origin: world +x (subject's left) is image right in the
    # front view; world +y is up; the 90-degree camera (on +x) sees +z (the body's front) on
    # its left, the 270-degree camera (mirrored) sees it on its left too.
    verts = _box_vertices((-0.3, -0.9, -0.15), (0.3, 0.9, 0.15))
    points = torch.tensor([[[0.2, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.1]]],
                          dtype=torch.float64)
    kp, vis = cameras.project_joints(points, ["front", "right", "left"], (64, 64),
                                     mesh=(verts, torch.zeros(0, 3, dtype=torch.long)))
    assert vis.all()
    centre = 31.5
    assert kp[0, 0, 0, 0] > centre and kp[0, 0, 0, 1] == pytest.approx(centre)
    assert kp[0, 0, 1, 1] < centre  # up is up
    assert kp[0, 1, 2, 0] < centre  # az 90 sees the front (+z) to its left
    assert kp[0, 2, 2, 0] < centre  # az 270, mirrored as the network sees it
    kp_phys, _ = cameras.project_joints(points, ["left"], (64, 64),
                                        normalization=cameras.normalize_body(verts), mirror=False)
    torch.testing.assert_close(kp_phys[0, 0, :, 0], 63 - kp[0, 2, :, 0])
    torch.testing.assert_close(kp_phys[0, 0, :, 1], kp[0, 2, :, 1])


@pytest.mark.parametrize("size", [(768, 768), (37, 53)])
def test_inference_normalization_fills_crop(size):
    verts = _box_vertices((0.1, -0.2, 0.3), (0.7, 1.6, 0.5))  # taller than wide, off-centre
    norm = cameras.normalize_body(verts)
    kp, vis = cameras.project_joints(verts, ["front"], size, normalization=norm)
    h, w = size
    height_px = kp[0, 0, :, 1].amax() - kp[0, 0, :, 1].amin()
    assert height_px.item() == pytest.approx(740 / 768 * h)
    centre = (kp[0, 0].amax(0) + kp[0, 0].amin(0)) / 2
    torch.testing.assert_close(centre, torch.tensor([(w - 1) / 2, (h - 1) / 2],
                                                    dtype=torch.float64))
    assert vis.all()


def test_training_normalization_unit_diagonal():
    verts = _box_vertices((0.0, 0.0, 0.0), (0.3, 1.2, 0.4))
    norm = cameras.normalize_body(verts, mode="training")
    normed = norm.apply(verts)
    assert (normed.amax(1) - normed.amin(1)).norm().item() == pytest.approx(1.0)
    torch.testing.assert_close(normed.amax(1) + normed.amin(1), torch.zeros(1, 3,
                                                                            dtype=torch.float64))
    torch.testing.assert_close(norm.matrix()[0, :3, :3] @ verts[0, 0] + norm.matrix()[0, :3, 3],
                               normed[0, 0])


def test_face_view_is_zoomed_front_crop():
    assert cameras.face_crop_box((768, 768)) == (256, 0, 512, 256)
    verts = _box_vertices((-0.3, -0.9, -0.15), (0.3, 0.9, 0.15))
    points = torch.tensor([[[0.05, 0.8, 0.0], [-0.02, 0.7, 0.1]]], dtype=torch.float64)
    kp, _ = cameras.project_joints(points, ["front", "face"], (768, 768),
                                   normalization=cameras.normalize_body(verts))
    front, face = kp[0, 0], kp[0, 1]
    expected = (front + 0.5 - torch.tensor([256.0, 0.0], dtype=torch.float64)) * 3 - 0.5
    torch.testing.assert_close(face, expected)


def test_azimuth_rotation_and_frame_visibility():
    verts = _box_vertices((-0.3, -0.9, -0.3), (0.3, 0.9, 0.3))
    norm = cameras.normalize_body(verts)
    point = torch.tensor([[[0.25, 0.0, 0.0], [5.0, 0.0, 0.0]]], dtype=torch.float64)
    kp, vis = cameras.project_joints(point, None, (100, 100), normalization=norm, mirror=False)
    scale = norm.scale.item()
    for v in range(6):
        a = math.radians(cameras.AZIMUTHS_DEG[v])
        x_ndc = 0.25 * math.cos(a) * scale * 2  # right axis (cos a, 0, -sin a), box side 1
        assert kp[0, v, 0, 0].item() == pytest.approx((x_ndc + 1) * 50 - 0.5)
    assert vis[0, :, 0].all()
    assert vis[0, :, 1].tolist() == [False, False, True, False, True, False]  # on the x axis


def test_project_joints_differentiable_and_checks():
    verts = _box_vertices((-0.3, -0.9, -0.3), (0.3, 0.9, 0.3))
    joints = torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True)
    kp, _ = cameras.project_joints(joints, None, (16, 16),
                                   normalization=cameras.normalize_body(verts))
    kp.sum().backward()
    assert joints.grad is not None and joints.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="joints"):
        cameras.project_joints(joints[0], None, (16, 16), normalization=None)
    with pytest.raises(ValueError, match="normalization"):
        cameras.project_joints(joints.detach(), None, (16, 16))
    with pytest.raises(ValueError, match="views"):
        cameras.resolve_views(["top"])
