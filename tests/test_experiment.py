"""The experiment's pieces: pose split, judges against known answers, the sign test, the judge
g_skel's independence, and a --quick end-to-end run (cached per stage)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drpose.eval.pose_split import SplitConfig, clip_windows, pose_difficulty, split_poses
from drpose.reward import judges


def _walk(rows: int, clips: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random (T, 63) features in clips (a random walk per clip)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=0.01, size=(rows * clips, 63)).astype(np.float32)
    ids = np.repeat(np.arange(clips), rows)
    features = np.concatenate([np.cumsum(steps[ids == c], axis=0) for c in range(clips)])
    return features, ids


def test_pose_split_never_trains_on_held_out_windows() -> None:
    features, ids = _walk(rows=200, clips=3)
    config = SplitConfig(window=20, gap=1, held_out_windows=4, per_window=3, easy=30, hard=20,
                         judge=20)
    split = split_poses(features, ids, config)
    held_rows = set(split.rows_of(split.held_windows).tolist())
    blocked = held_rows | set(split.rows_of(split.unused_windows).tolist())
    training = split.training_rows()
    assert not blocked & set(training.tolist())
    assert set(split.held_out.tolist()) <= held_rows
    assert len(split.held_out) == 4 * 3
    # pools are disjoint, and no training row is within a window of a held-out row's window
    assert len(set(training.tolist())) == len(training)
    for w in split.held_windows:
        for other in (w - 1, w + 1):
            if 0 <= other < len(split.windows) and split.windows[other, 0] == split.windows[w, 0]:
                assert other in split.unused_windows or other in split.held_windows
    difficulty = pose_difficulty(features)
    assert difficulty[split.easy].max() <= split.easy_threshold
    assert difficulty[split.hard].min() >= split.hard_threshold
    assert difficulty[split.judge].min() > split.easy_threshold
    assert (len(split.easy), len(split.hard), len(split.judge)) == (30, 20, 20)


def test_clip_windows_stay_inside_clips() -> None:
    ids = np.array([0] * 25 + [1] * 10 + [2] * 41)
    windows = clip_windows(ids, 10)
    assert windows.tolist() == [[0, 0, 10], [0, 10, 20], [1, 25, 35], [2, 35, 45],
                                [2, 45, 55], [2, 55, 65], [2, 65, 75]]


def test_pose_difficulty_of_rest_is_zero_and_grows_with_offset() -> None:
    from drpose.eval.pose_split import rest_features

    rest = rest_features()[None]
    moved = rest.copy().reshape(1, 21, 3)
    moved[0, :, 0] += 0.1  # every joint 10 cm to the side
    values = pose_difficulty(np.concatenate([rest, moved.reshape(1, 63)]))
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert values[1] == pytest.approx(0.1, rel=1e-5)


def test_silhouette_iou_identical_disjoint_and_half() -> None:
    a = torch.zeros(3, 8, 8, dtype=torch.bool)
    a[:, :4] = True
    b = ~a
    c = torch.zeros_like(a)
    c[:, :2] = True
    assert judges.silhouette_iou(a, a).tolist() == [1.0, 1.0, 1.0]
    assert judges.silhouette_iou(a, b).tolist() == [0.0, 0.0, 0.0]
    assert judges.silhouette_iou(a, c).tolist() == [0.5, 0.5, 0.5]
    empty = torch.zeros_like(a)
    assert judges.silhouette_iou(empty, empty).tolist() == [1.0, 1.0, 1.0]


def _normal_image(normals: torch.Tensor) -> torch.Tensor:
    return normals * 0.5 + 0.5


@pytest.mark.parametrize("degrees", [0.0, 10.0, 30.0, 75.0])
def test_normal_error_of_a_known_rotation(degrees: float) -> None:
    from scipy.spatial.transform import Rotation

    generator = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 9, 7, generator=generator), dim=1)
    axis = torch.nn.functional.normalize(torch.randn(3, generator=generator), dim=0)
    rotation = torch.from_numpy(Rotation.from_rotvec(
        axis.numpy() * math.radians(degrees)).as_matrix()).float()
    # rotating about an axis turns a normal by the rotation angle only when it is orthogonal to
    # the axis: project the normals onto the plane orthogonal to the axis first
    normals = normals - (normals * axis[None, :, None, None]).sum(1, keepdim=True) * axis[
        None, :, None, None]
    normals = torch.nn.functional.normalize(normals, dim=1)
    rotated = torch.einsum("ij,vjhw->vihw", rotation, normals)
    mask = torch.ones(2, 9, 7, dtype=torch.bool)
    error = judges.normal_angular_error(_normal_image(rotated), _normal_image(normals), mask,
                                        mask)
    assert error.tolist() == pytest.approx([degrees, degrees], abs=0.05)


def test_normal_error_counts_only_the_union_of_masks() -> None:
    up = torch.zeros(1, 3, 4, 4)
    up[:, 1] = 1.0
    side = torch.zeros(1, 3, 4, 4)
    side[:, 0] = 1.0
    pred = up.clone()
    pred[..., 2:] = side[..., 2:]  # right half: 90 degrees off
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[..., :2] = True  # only the left half is body
    error = judges.normal_angular_error(_normal_image(pred), _normal_image(up), mask, mask)
    assert error.item() == pytest.approx(0.0, abs=1e-3)
    both = torch.ones_like(mask)
    error = judges.normal_angular_error(_normal_image(pred), _normal_image(up), both, both)
    assert error.item() == pytest.approx(45.0, abs=1e-3)


def test_foreground_mask_separates_normal_colours_from_white() -> None:
    generator = torch.Generator().manual_seed(1)
    normals = torch.nn.functional.normalize(torch.randn(1, 3, 6, 6, generator=generator), dim=1)
    image = _normal_image(normals)
    image[..., :3] = 1.0  # background on the left
    mask = judges.foreground_mask(image)
    assert not mask[..., :3].any() and mask[..., 3:].all()


def test_sign_test_exact_values() -> None:
    test = judges.sign_test([1.0, 2.0, 0.5, 3.0])
    assert (test.better, test.worse, test.ties) == (4, 0, 0)
    assert test.p_value == pytest.approx(0.125)
    test = judges.sign_test([1.0] * 9 + [-1.0] + [0.0] * 3)
    assert (test.better, test.worse, test.ties) == (9, 1, 3)
    assert test.p_value == pytest.approx(2 * 11 / 1024)
    assert judges.sign_test([0.0, 0.0]).p_value == 1.0
    assert judges.sign_test([1.0, -1.0]).p_value == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    values = [0.3, -0.1, 0.2, 0.4, 0.1, -0.2, 0.5, 0.6, 0.7, 0.2, -0.3, 0.9]
    expected = scipy_stats.binomtest(9, 12, 0.5).pvalue
    assert judges.sign_test(values).p_value == pytest.approx(expected)


def test_judge_g_skel_is_independent_of_the_reward(tmp_path) -> None:
    from drpose.eval import experiment

    config = experiment.ExperimentConfig()
    renders = {pool: tmp_path / pool for pool in ("easy", "hard", "judge", "held_out")}
    configs = experiment.skel_configs(config, tmp_path, renders, tmp_path / "vae")
    reward, judge = configs["skel_reward"], configs["skel_judge"]
    assert reward.train.seed != judge.train.seed
    assert tuple(reward.channels) != tuple(judge.channels)
    assert reward.renders != judge.renders
    assert reward.train.run_dir != judge.train.run_dir
    with pytest.raises(ValueError, match="judge g_skel must differ"):
        experiment.ExperimentConfig(judge_seed=experiment.REWARD_SKEL_SEED)
    with pytest.raises(ValueError, match="judge g_skel must differ"):
        experiment.ExperimentConfig(judge_channels=config.reward_channels)


def test_quick_experiment_end_to_end_and_rerun_reuses_stages(tmp_path, capsys) -> None:
    from drpose.eval import experiment

    config = experiment.ExperimentConfig.quick()
    config.progress = False
    out = experiment.run_experiment(config, tmp_path / "exp")
    for name in ("results.md", "results.csv", "curves.png", "grid.png", "config.json"):
        assert (out / name).is_file(), name
    rows = (out / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["base", "drpose", "upper", "no_kl"]
    # the split the run used: no held-out window row in a training pool
    split = experiment.load_split(out / "poses")
    blocked = set(split.rows_of(np.concatenate([split.held_windows, split.unused_windows])))
    assert not blocked & set(split.training_rows().tolist())
    drpose = json.loads((out / "drpose_s0" / "done.json").read_text())
    assert [p["step"] for p in drpose["curve"]] == [0, 2, 4]
    assert len(drpose["per_pose"]["iou"]) == len(split.held_out)
    capsys.readouterr()
    experiment.run_experiment(config, out)
    assert capsys.readouterr().out.count("done before, reused") == 13


def _curve(*points: tuple[int, float, float, float]) -> list[dict[str, float]]:
    return [{"step": s, "reward_posescore": r, "judge_posescore": j, "iou": i}
            for s, r, j, i in points]


def test_hacking_verdict_names_the_interval_where_judges_fall() -> None:
    """Reward up throughout; the judges rise to step 40 and fall after it. From step 0 the run
    still looks fine, so only the interval check can tell."""
    from drpose.eval.experiment import hacking_verdict

    text = hacking_verdict(_curve((0, -0.05, -0.05, 0.40), (40, -0.049, -0.048, 0.50),
                                  (60, -0.048, -0.049, 0.45)))
    assert "did not fall" in text  # step 0 -> 60: reward +0.002, judge +0.001, IoU +0.05
    assert "From step 40 to 60 the reward rose by 0.00100" in text
    assert "judge PoseScore fell by 0.00100" in text and "silhouette IoU fell by 0.0500" in text
    assert "From step 0 to 40 the reward rose" not in text


def test_hacking_verdict_whole_run_and_no_rise() -> None:
    from drpose.eval.experiment import hacking_verdict

    hacked = hacking_verdict(_curve((0, -0.05, -0.05, 0.40), (20, -0.04, -0.06, 0.41)))
    assert "fell: this is reward hacking" in hacked and "judge PoseScore fell by 0.01000" in hacked
    flat = hacking_verdict(_curve((0, -0.05, -0.05, 0.40), (20, -0.05, -0.06, 0.30)))
    assert "did not rise" in flat and "sets in" not in flat
    assert hacking_verdict(_curve((0, -0.05, -0.05, 0.4))).startswith("No curve")


def test_final_verdict_lists_the_judges_that_got_worse() -> None:
    from drpose.eval.experiment import METRICS, final_verdict

    base = {"model": "base", **{m: 0.0 for m in METRICS}}
    no_kl = {**base, "model": "no_kl", "reward_posescore": 0.01, "iou": 0.1,
             "normal_error_deg": 9.0}  # lower is better for the normal error
    text = final_verdict([base, no_kl], "no_kl")
    assert text is not None and "rose; judges that got worse: normal error" in text
    assert text.endswith("reward hacking.") and "IoU" not in text.split("worse:")[1]
    assert final_verdict([base], "drpose") is None
