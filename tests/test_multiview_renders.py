import json

import numpy as np
import pytest
import torch

from drpose.data.multiview import (
    META_FILE,
    MultiViewRenders,
    RenderConfig,
    build_renders,
    camera_light,
    load_or_build,
    save_renders,
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
    normals, colours = first.views()  # read now: the folder is rebuilt below
    again = load_or_build(tmp_path, RenderConfig(num_poses=2, resolution=16, held_out=2, seed=1))
    assert again.config.seed == 1
    assert torch.equal(normals, again.views()[0])  # same poses: normals do not depend on seed
    assert not torch.equal(colours, again.views()[1])  # another palette


def test_deterministic(tmp_path):
    config = RenderConfig(num_poses=2, resolution=16, held_out=2)
    a = load_or_build(tmp_path / "a", config)
    b = load_or_build(tmp_path / "b", config)
    for name in ("normals", "colours", "masks", "joints", "center", "scale"):
        assert torch.equal(getattr(a, name)[:], getattr(b, name)[:]), name


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


def test_images_are_read_per_sample_not_held(tmp_path, monkeypatch):
    """Loading reads no image; indexing reads only the samples asked for; the skel stage's
    encoding reads each sample once, a chunk at a time (memory bounded by the chunk)."""
    from drpose.data.multiview import SampleImages
    from drpose.train.skel import view_latents

    folder = load_or_build(tmp_path, RenderConfig(num_poses=6, resolution=16, held_out=3))
    reads: list[int] = []
    real = SampleImages.read
    monkeypatch.setattr(SampleImages, "read", lambda self, row: reads.append(int(row))
                        or real(self, row))
    data = MultiViewRenders.load(folder.folder)
    held = data.subset("eval")
    assert reads == [] and held.normals.shape == (2, 6, 3, 16, 16)
    assert held.masks[1, :, 0].shape == (6, 16, 16) and reads == [5]
    assert held.colours[torch.tensor([True, False])].shape == (1, 6, 3, 16, 16)
    assert reads == [5, 2]
    reads.clear()
    seen: list[int] = []

    class CountingVAE(torch.nn.Module):  # records how many images each encode call gets
        config = type("Config", (), {"scaling_factor": 1.0})
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, images):
            seen.append(len(images))
            mode = images[:, :1, ::8, ::8].repeat(1, 4, 1, 1)
            return type("Out", (), {"latent_dist": type("D", (), {"mode": lambda _: mode})()})

    latents = view_latents(CountingVAE(), data, chunk=24)
    assert latents.shape == (6, 6, 8, 2, 2)
    assert sorted(reads) == sorted(2 * list(range(6)))  # normals and colours, once each
    assert seen == [24, 24, 24]  # 2 samples x 6 views x 2 domains per call
    torch.testing.assert_close(latents[4, :, :1], (data.normals[4][:, :1, ::8, ::8] / 255.0) * 2
                               - 1)


def test_interrupted_or_old_folders_are_rebuilt_and_bad_files_named(tmp_path):
    from drpose.data.multiview import FORMAT_VERSION, sample_file

    config = RenderConfig(num_poses=2, resolution=16, held_out=2)

    def broken():
        yield from build_renders(config)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_renders(broken(), config, tmp_path, show_progress=False)
    assert sample_file(tmp_path, 1).is_file() and not (tmp_path / META_FILE).exists()
    with pytest.raises(FileNotFoundError, match="load_or_build"):
        MultiViewRenders.load(tmp_path)
    data = load_or_build(tmp_path, config)  # no meta.json: built again
    assert len(data) == 2
    meta = json.loads((tmp_path / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(ValueError, match="rebuild"):
        MultiViewRenders.load(tmp_path)
    assert load_or_build(tmp_path).config == config  # an old format: rebuilt, same config
    sample_file(tmp_path, 1).write_bytes(b"not an npz")
    with pytest.raises(OSError, match=r"000001\.npz"):
        MultiViewRenders.load(tmp_path).views(1)
