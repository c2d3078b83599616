"""Pose selection: farthest point sampling, temporal windows, features, diversity, the plot."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from drpose.motion.select import (
    diversity_ratio,
    farthest_point_sampling,
    joint_position_std,
    normalise_root,
    plot_pose_distribution,
    pose_features,
    select_poses,
    temporal_windows,
)


def brute_force_fps(points: np.ndarray, count: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook FPS in float64: picks and, for each pick, its distance to the earlier picks."""
    nearest = np.full(len(points), np.inf)
    picks, gaps = [first], [np.inf]
    for _ in range(count - 1):
        nearest = np.minimum(nearest, np.linalg.norm(points - points[picks[-1]], axis=1))
        picks.append(int(np.argmax(nearest)))
        gaps.append(float(nearest[picks[-1]]))
    return np.array(picks), np.array(gaps)


@pytest.mark.parametrize(("rows", "dims", "count", "first"), [(500, 63, 60, 0), (777, 5, 101, 13)])
def test_fps_equals_brute_force(rows, dims, count, first):
    points = np.random.default_rng(rows).normal(size=(rows, dims))
    picks = farthest_point_sampling(points, count, first=first)
    expected, _ = brute_force_fps(points, count, first)
    assert picks[0] == first
    np.testing.assert_array_equal(picks, expected)


def test_fps_greedy_property_on_clustered_data_with_duplicates():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, 12)) * 3
    points = centres[rng.integers(0, 8, 2000)] + rng.normal(size=(2000, 12)) * 0.2
    points[1000:1100] = points[0:100]  # exact duplicates: ties
    picks = farthest_point_sampling(points, 150, first=7)
    assert picks[0] == 7 and len(set(picks.tolist())) == 150
    _, gaps = brute_force_fps(points, 150, 7)
    # Each pick is *a* farthest row: its distance to the earlier picks equals the maximum.
    nearest = np.full(len(points), np.inf)
    for i in range(1, 150):
        nearest = np.minimum(nearest, np.linalg.norm(points - points[picks[i - 1]], axis=1))
        assert nearest[picks[i]] == pytest.approx(nearest.max(), rel=1e-5)
        assert nearest.max() == pytest.approx(gaps[i], rel=1e-5)


def test_fps_rejects_bad_arguments():
    with pytest.raises(ValueError, match="count must be in"):
        farthest_point_sampling(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="first must be a row index"):
        farthest_point_sampling(np.zeros((3, 2)), 2, first=3)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        farthest_point_sampling(np.zeros(3), 1)


def test_windows_stay_in_their_clip_contiguous_and_hold_the_anchor():
    clip_ids = np.repeat(np.arange(4), [12, 30, 10, 25])
    anchors = np.array([0, 11, 12, 26, 41, 42, 51, 52, 76])
    for stride in (1, 2):
        windows = temporal_windows(anchors, clip_ids, neighbours=4, stride=stride)
        assert windows.shape == (len(anchors), 5)
        assert np.all(np.diff(windows, axis=1) == stride)
        assert np.all(clip_ids[windows] == clip_ids[anchors][:, None])
        assert np.all((windows == anchors[:, None]).sum(axis=1) == 1)
    centred = temporal_windows(np.array([20]), clip_ids, neighbours=4)
    np.testing.assert_array_equal(centred[0], [18, 19, 20, 21, 22])


def test_select_poses_skips_short_clips_and_returns_drpose_shapes():
    rng = np.random.default_rng(2)
    lengths = [5, 40, 3, 60]  # clips of 5 and 3 frames cannot hold a 10-frame window
    clip_ids = np.repeat(np.arange(4), lengths)
    features = rng.normal(size=(len(clip_ids), 6))
    selection = select_poses(features, clip_ids, anchors=20, neighbours=9)
    assert selection.windows.shape == (20, 10) and selection.rows.shape == (200,)
    assert set(clip_ids[selection.anchors].tolist()) <= {1, 3}
    assert np.all(clip_ids[selection.windows] == clip_ids[selection.anchors][:, None])
    with pytest.raises(ValueError, match="cannot pick 101 anchors"):
        select_poses(features, clip_ids, anchors=101, neighbours=9)


def test_diversity_known_answers():
    # Two poses differing by 2 m in every coordinate: std 1 m per coordinate.
    joints = np.stack([np.zeros((22, 3)), np.full((22, 3), 2.0)])
    assert joint_position_std(joints) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(100, 22, 3))
    assert diversity_ratio(3 * reference + 5, reference) == pytest.approx(3.0)
    # Coordinate-wise: std (1, 0, 0) per joint averages to 1/3.
    spread = np.zeros((2, 4, 3))
    spread[1, :, 0] = 2.0
    assert joint_position_std(spread) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def body():
    from drpose.body import StandInModelWarning
    from drpose.motion.body_joints import BodyJoints

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return BodyJoints.default()


def test_features_ignore_heading_and_translation_but_not_tilt(body):
    generator = torch.Generator().manual_seed(0)
    pose = torch.randn(4, 63, generator=generator) * 0.3
    orient = torch.randn(4, 3, generator=generator) * 0.5
    joints = body(orient, pose, torch.randn(4, 3, generator=generator))
    features = normalise_root(joints, orient)
    # Turn the whole posed body about the vertical axis through the origin.
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_euler("y", 73, degrees=True)
    turned_orient = torch.from_numpy((turn * Rotation.from_rotvec(orient.numpy())).as_rotvec())
    turned = body(turned_orient.float(), pose)
    torch.testing.assert_close(normalise_root(turned, turned_orient.float()), features, atol=2e-6,
                               rtol=0)  # fmt: skip
    tilt = Rotation.from_euler("x", 40, degrees=True)
    tilted_orient = torch.from_numpy((tilt * Rotation.from_rotvec(orient.numpy())).as_rotvec())
    tilted = normalise_root(body(tilted_orient.float(), pose), tilted_orient.float())
    assert (tilted - features).abs().max() > 0.05


def test_pose_features_and_plot_on_the_packaged_sample(tmp_path, body):
    from drpose.motion.load import default_pose_sequences
    from drpose.motion.sequence import concatenate

    sequence, clip_ids = concatenate(default_pose_sequences())
    features = pose_features(sequence)
    assert features.shape == (len(sequence), 63) and features.dtype == np.float32
    selection = select_poses(features, clip_ids, anchors=15, neighbours=9)
    chosen = features[selection.anchors]
    # Anchors are spread out: more diverse than the clips they come from.
    assert diversity_ratio(chosen, features) > 1.0
    path = plot_pose_distribution(features, selection.anchors, tmp_path / "poses.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
