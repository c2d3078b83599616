"""Condition maps of the stand-in SMPL-X body: normal convention, alignment of images with
projected keypoints, mirroring, depth, visibility, heatmaps and the PNG grid."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from drpose.body import (
    POSESCORE_JOINTS,
    SMPLX_JOINT_NAMES,
    StandInModelWarning,
    load_smplx,
    posed_body,
)
from drpose.render import cameras
from drpose.render.conditions import (
    ConditionConfig,
    encode_normals,
    heatmaps_to_rgb,
    render_conditions,
    save_view_grid,
)

SIZE = (96, 96)


@pytest.fixture(scope="module")
def bodies():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)  # the stand-in is what we test with
        model = load_smplx(batch_size=2)
    pose = torch.zeros(2, 63)
    pose[1] = torch.randn(63, generator=torch.Generator().manual_seed(0)) * 0.4
    out = posed_body(model, pose)
    joints = out.joints[:, list(POSESCORE_JOINTS.indices)]
    return out.vertices, out.faces, joints


@pytest.fixture(scope="module")
def maps(bodies):
    vertices, faces, joints = bodies
    return render_conditions(vertices, faces, joints, ConditionConfig(size=SIZE, sigma=2.0))


def test_shapes_and_normal_convention(maps):
    b, v, (h, w), j = 2, 6, SIZE, len(POSESCORE_JOINTS)
    assert maps.normals.shape == (b, v, 3, h, w) and maps.mask.shape == (b, v, 1, h, w)
    assert maps.depth.shape == (b, v, 1, h, w) and maps.heatmaps.shape == (b, v, j, h, w)
    on = maps.mask[0, :, 0] > 0  # rest pose
    mean = torch.stack([maps.normals[0, k][:, on[k]].mean(1) for k in range(6)])  # (V, 3)
    # front-camera frame for every view: front sees +z, back -z, az 90 sees +x, az 270 sees -x
    assert mean[0, 2] > 0.5 and mean[3, 2] < -0.5
    assert mean[2, 0] > 0.5 and mean[4, 0] < -0.5
    assert mean[1, 0] > 0.2 and mean[1, 2] > 0.2 and mean[5, 0] < -0.2 and mean[5, 2] > 0.2
    norms = maps.normals.norm(dim=2)
    torch.testing.assert_close(norms[maps.mask[:, :, 0] > 0],
                               torch.ones(int((maps.mask > 0).sum())))
    assert (maps.normals[(maps.mask == 0).expand_as(maps.normals)] == 0).all()


def test_images_align_with_projected_points(bodies, maps):
    # covered pixel centres lie inside the box of the projected vertices and fill it up to thin
    # tips (fingers) narrower than a pixel, in every view
    vertices, faces, _ = bodies
    kp, _ = cameras.project_joints(vertices, None, SIZE, mesh=(vertices, faces))
    for b in range(2):
        for v in range(6):
            rows, cols = (maps.mask[b, v, 0] > 0).nonzero(as_tuple=True)
            box = torch.stack([cols.min(), rows.min(), cols.max(), rows.max()]).float()
            proj = torch.cat([kp[b, v].amin(0), kp[b, v].amax(0)])
            assert (box[:2] >= proj[:2] - 1e-3).all() and (box[2:] <= proj[2:] + 1e-3).all()
            assert (box - proj).abs().max() < 1.5
    # inference normalisation: the front view's longer side is 740/768 of the image
    front = kp[:, 0]
    extent = (front.amax(1) - front.amin(1)).amax(1)
    torch.testing.assert_close(extent, torch.full((2,), 740 / 768 * SIZE[0]))


def test_mirrored_views_flip_images_only(bodies, maps):
    vertices, faces, joints = bodies
    phys = render_conditions(vertices, faces, joints,
                             ConditionConfig(size=SIZE, views=("back", "left"), mirror=False))
    for k, v in enumerate((3, 4)):
        flipped = phys.mask[:, k].flip(-1)
        assert (flipped != maps.mask[:, v]).float().mean() < 1e-3
        same = (flipped > 0) & (maps.mask[:, v] > 0)
        diff = (phys.normals[:, k].flip(-1) - maps.normals[:, v]).abs().amax(1, keepdim=True)
        assert diff[same].max() < 1e-4  # the vectors are not mirrored
    torch.testing.assert_close(phys.keypoints[..., 0], SIZE[1] - 1 - maps.keypoints[:, 3:5, :, 0])


def test_depth_is_metric_distance(bodies, maps):
    vertices, _, _ = bodies
    norm = cameras.normalize_body(vertices)
    covered = maps.mask[:, 0, 0] > 0
    nearest = torch.stack([maps.depth[b, 0, 0][covered[b]].min() for b in range(2)])
    expected = cameras.CAMERA_DISTANCE / norm.scale - (vertices[..., 2].amax(1) - norm.center[:, 2])
    torch.testing.assert_close(nearest, expected, atol=0.01, rtol=0)  # 1 cm at 96 px


def test_depth_visibility_of_the_rest_pose(maps):
    names = POSESCORE_JOINTS.names
    visible = dict(zip(names, maps.visible[0, 2].tolist(), strict=True))  # az 90: the left side
    assert all(maps.visible[0, 0])  # front view of the T pose: everything
    for side, seen in (("left", True), ("right", False)):
        for part in ("hip", "knee", "ankle"):
            assert visible[f"{side}_{part}"] is seen, f"{side}_{part}"
    assert SMPLX_JOINT_NAMES[:23] == names


def test_heatmaps_peak_at_visible_keypoints(maps):
    hm, kp, vis = maps.heatmaps, maps.keypoints, maps.visible
    assert (hm[~vis] == 0).all()
    b, v, j = vis.nonzero()[0].tolist()
    peak = hm[b, v, j].flatten().argmax()
    y, x = divmod(int(peak), SIZE[1])
    assert abs(x - kp[b, v, j, 0]) <= 0.5 and abs(y - kp[b, v, j, 1]) <= 0.5


def test_save_view_grid(tmp_path, maps):
    images = encode_normals(maps.normals, maps.mask)
    overlay = torch.maximum(images * 0.5, heatmaps_to_rgb(maps.heatmaps))
    path = save_view_grid(overlay, tmp_path / "grid.png", gap=2)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (2 * SIZE[0] + 2, 6 * SIZE[1] + 5 * 2, 3)
    expected = (overlay[1, 2].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    top, left = SIZE[0] + 2, 2 * (SIZE[1] + 2)
    np.testing.assert_array_equal(pixels[top:top + SIZE[0], left:left + SIZE[1]], expected)
    grey = save_view_grid(maps.mask[0], tmp_path / "mask.png")
    assert np.asarray(Image.open(grey)).shape == (SIZE[0], 6 * SIZE[1] + 5 * 4, 3)
    with pytest.raises(ValueError, match="images"):
        save_view_grid(maps.heatmaps[0], tmp_path / "bad.png")
