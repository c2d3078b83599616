import numpy as np
import pytest
import torch

from drpose.data.multiview import (
    META_FILE,
    MultiViewRenders,
    RenderConfig,
    camera_light,
    load_or_build,
)
from drpose.render import cameras


@pytest.fixture(scope="module")
def data(tiny_renders) -> MultiViewRenders:
    return MultiViewRenders.load(tiny_renders)


def test_shapes_and_ranges(data):
    n, r = data.config.num_poses, data.config.resolution
    item = data[0]
    assert len(data) == n
    assert item["image"].shape == (3, r, r)
    assert item["normals"].shape == item["colours"].shape == (6, 3, r, r)
    assert item["masks"].shape == (6, 1, r, r)
    assert item["joints"].shape == (23, 3)
    for key in ("image", "normals", "colours", "masks"):
        assert item[key].min() >= 0 and item[key].max() <= 1
    # the input image is the front colour view
    torch.testing.assert_close(item["image"], item["colours"][data.config.input_view])


def test_background_white_and_body_covered(data):
    normals, colours = data.views(slice(0, 4))
    masks = data.masks[:4].bool().expand_as(normals)
    assert torch.all(normals[~masks] == 1) and torch.all(colours[~masks] == 1)
    coverage = data.masks[:4].float().mean(dim=(-1, -2, -3))
    assert torch.all(coverage > 0.05), coverage  # every view shows the body


def test_normal_colours_are_unit_front_frame_normals(data):
    normals, _ = data.views(slice(0, 4))
    mask = data.masks[:4].bool().squeeze(2)
    vectors = (normals * 2 - 1).permute(0, 1, 3, 4, 2)[mask]
    # uint8 quantisation: |n| within a few 1/255 steps of 1
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(len(vectors)), atol=0.03)
    # front-camera frame: in the back view (3) the visible surface faces -z, in the front +z
    back_mask, front_mask = mask[:, 3], mask[:, 0]
    front = (normals[:, 0] * 2 - 1)[:, 2][front_mask].mean()
    back = (normals[:, 3] * 2 - 1)[:, 2][back_mask].mean()
    assert front > 0.3 and back < -0.3


def test_projected_joints_fall_on_the_silhouette_in_every_view(data):
    # rendering and projection agree, mirroring of views 3 and 4 included
    r = data.config.resolution
    keypoints, visible = data.keypoints((r, r))
    cols = keypoints[..., 0].round().long().clamp(0, r - 1)
    rows = keypoints[..., 1].round().long().clamp(0, r - 1)
    mask = data.masks[:, :, 0]  # (N, V, R, R)
    n, v = np.indices(cols.shape[:2])
    hits = mask[torch.from_numpy(n)[..., None], torch.from_numpy(v)[..., None], rows, cols]
    assert visible.all()
    assert hits.float().mean() > 0.9
    # and the mirrored back view is not the unmirrored one
    flipped, _ = cameras.project_joints(data.joints, [3], (r, r), mirror=False,
                                        normalization=data.normalization())
    assert (flipped[:, 0, :, 0] - keypoints[:, 3, :, 0]).abs().max() > 1


def test_splits_partition_and_normalized_joints(data):
    train, held = data.subset("train"), data.subset("eval")
    assert len(train) + len(held) == len(data)
    assert set(train.indices).isdisjoint(held.indices)
    assert list(held.indices) == [i for i in range(len(data)) if i % 3 == 2]
    normalized = data.normalized_joints(slice(0, 3))
    expected = (data.joints[:3] - data.center[:3, None]) * data.scale[:3, None, None]
    torch.testing.assert_close(normalized, expected)
    # normalised bodies fit the view box
    assert normalized[..., :2].abs().max() < cameras.ORTHO_SCALE / 2


def test_cache_reused_and_rebuilt_on_config_change(tiny_renders, tmp_path):
    stamp = (tiny_renders / META_FILE).stat().st_mtime_ns
    load_or_build(tiny_renders, MultiViewRenders.load(tiny_renders).config)
    assert (tiny_renders / META_FILE).stat().st_mtime_ns == stamp
    small = RenderConfig(num_poses=2, resolution=16, held_out=2)
    first = load_or_build(tmp_path, small)
    again = load_or_build(tmp_path, RenderConfig(num_poses=2, resolution=16, held_out=2, seed=1))
    assert again.config.seed == 1
    assert torch.equal(first.normals, again.normals)  # same poses: normals do not depend on seed
    assert not torch.equal(first.colours, again.colours)  # another palette


def test_deterministic(tmp_path):
    config = RenderConfig(num_poses=2, resolution=16, held_out=2)
    a = load_or_build(tmp_path / "a", config)
    b = load_or_build(tmp_path / "b", config)
    for name in ("normals", "colours", "masks", "joints", "center", "scale"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_camera_light_is_the_front_light_rotated_with_each_camera():
    light = camera_light((0.0, 0.0, 1.0))  # towards each camera
    for view, azimuth in enumerate(cameras.AZIMUTHS_DEG[:6]):
        a = np.radians(azimuth)
        torch.testing.assert_close(light[view], torch.tensor([np.sin(a), 0.0, np.cos(a)],
                                                             dtype=torch.float32))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_or_build"):
        MultiViewRenders.load(tmp_path)
    with pytest.raises(ValueError, match="num_poses"):
        load_or_build(tmp_path, RenderConfig(num_poses=10**6))
