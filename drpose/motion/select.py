"""Pose selection for DrPose15K: farthest point sampling, temporal windows, diversity, a plot.

The feature (:func:`pose_features`): SMPL-X body joints 1-21 of the posed body with betas = 0
and transl = 0 (so body shape and trajectory do not count), relative to the pelvis (joint 0), and
rotated about the vertical (y) axis so that the pelvis heading (its local +z axis projected on the
ground plane) points to +z. Pitch and roll are kept on purpose: a lying pose and a standing pose
look different in an image, a turned one only needs another camera. The result is a (N, 63)
float32 vector in metres; distances are Euclidean over it.

Farthest point sampling (:func:`farthest_point_sampling`) starts at a given row and repeatedly
takes the row whose distance to its nearest chosen row is largest (ties: the lowest row index).
:func:`select_poses` runs it over the rows of clips long enough to hold a window and returns, per
anchor, a window of ``neighbours + 1`` consecutive rows (stride ``stride``) of the anchor's clip
with the anchor as close to the centre as the clip allows. DrPose15K: 1,500 anchors x
(9 neighbours + anchor) = 15,000 poses.

Diversity (:func:`joint_position_std`, as the paper compares datasets by the "standard deviation
of SMPL-X joint positions"): for joints (N, J, 3) in the feature's normalisation, the standard
deviation over the N poses of each of the J x 3 coordinates (population std, ddof = 0), averaged
over the J x 3 coordinates, in metres. :func:`diversity_ratio` divides that of a set by that of a
reference set (the paper reports 1.73 for DrPose15K against THuman2.1's 2,445 poses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drpose.motion.sequence import PoseSequence

NUM_FEATURE_JOINTS = 21  # SMPL-X joints 1-21 relative to joint 0


def normalise_root(joints: torch.Tensor, global_orient: torch.Tensor) -> torch.Tensor:
    """Pelvis-relative, heading-aligned joints.

    Args:
        joints: (N, J, 3) posed joints, joint 0 the pelvis, y up, metres.
        global_orient: (N, 3) axis-angle of the pelvis (the rotation that posed ``joints``).

    Returns:
        (N, J, 3) joints minus the pelvis, rotated about y by minus the heading angle
        ``atan2(f_x, f_z)`` of ``f = R(global_orient) @ (0, 0, 1)``.
    """
    from smplx.lbs import batch_rodrigues

    relative = joints - joints[:, :1]
    forward = batch_rodrigues(global_orient.reshape(-1, 3))[:, :, 2]
    heading = torch.atan2(forward[:, 0], forward[:, 2])
    cos, sin = torch.cos(heading)[:, None], torch.sin(heading)[:, None]
    x, y, z = relative.unbind(-1)
    # Rotation about y by -heading: x' = cos x - sin z, z' = sin x + cos z.
    return torch.stack([cos * x - sin * z, y, sin * x + cos * z], dim=-1)


def pose_features(sequence: PoseSequence, *, batch_size: int = 65536) -> np.ndarray:
    """(T, 63) float32 selection features of every row (module docstring), via the default body
    (:func:`drpose.body.load_smplx`) with betas = 0."""
    from drpose.motion.body_joints import BodyJoints

    body = BodyJoints.default()
    out = np.empty((len(sequence), 3 * NUM_FEATURE_JOINTS), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(sequence), batch_size):
            rows = slice(start, start + batch_size)
            orient = torch.from_numpy(sequence.global_orient[rows])
            joints = body(orient, torch.from_numpy(sequence.body_pose[rows]))
            feature = normalise_root(joints[:, : NUM_FEATURE_JOINTS + 1], orient)[:, 1:]
            out[rows] = feature.reshape(feature.shape[0], -1).numpy()
    return out


def farthest_point_sampling(
    features: np.ndarray | torch.Tensor, count: int, *, first: int = 0
) -> np.ndarray:
    """Greedy farthest point sampling, exact, with triangle-inequality pruning.

    Pick i is the row whose distance to its nearest earlier pick is largest (ties: any of the
    tied rows). Each row remembers its nearest pick o and distance d; a new pick a can only come
    closer than d when ``|a - o| < 2 d`` (triangle inequality), so only those rows' distances
    are computed: one full pass for the first pick, then a fraction of the rows (about a tenth
    on pose data), plus O(N) scalar work per pick.

    Args:
        features: (N, D) rows; distances in float32, computed from differences.
        count: number of rows to pick, 1 <= count <= N.
        first: the row picked first.

    Returns:
        (count,) int64 row indices in pick order.
    """
    data = features.detach().cpu().numpy() if torch.is_tensor(features) else features
    points = np.ascontiguousarray(data, dtype=np.float32)
    if points.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {points.shape}")
    total = points.shape[0]
    if not 1 <= count <= total:
        raise ValueError(f"count must be in [1, {total}], got {count}")
    if not 0 <= first < total:
        raise ValueError(f"first must be a row index in [0, {total}), got {first}")
    nearest = np.full(total, np.inf, dtype=np.float32)  # squared distance to the nearest pick
    owner = np.zeros(total, dtype=np.int64)  # which pick that is
    chosen = np.empty((count, points.shape[1]), dtype=np.float32)
    picks = np.empty(count, dtype=np.int64)
    pick = first
    for i in range(count):
        picks[i] = pick
        anchor = chosen[i] = points[pick]
        if i == 0:
            rows = np.arange(total)
        else:
            # |a - o|^2 < 4 d^2, with slack so float32 rounding never skips a row wrongly.
            to_owner = ((chosen[:i] - anchor) ** 2).sum(1) * np.float32(1 - 1e-5)
            rows = np.flatnonzero(to_owner[owner] < 4 * nearest)
        difference = np.take(points, rows, axis=0)  # several times faster than points[rows]
        difference -= anchor
        distance = np.einsum("ij,ij->i", difference, difference)
        closer = distance < nearest[rows]
        nearest[rows[closer]] = distance[closer]
        owner[rows[closer]] = i
        nearest[pick] = -1.0  # never pick a chosen row again, even among duplicates
        pick = int(np.argmax(nearest))
    return picks


@dataclass
class Selection:
    """Chosen poses.

    Attributes:
        anchors: (N,) int64 rows picked by farthest point sampling, in pick order.
        windows: (N, W) int64 rows of each anchor's temporal window, increasing, same clip,
            containing the anchor; W = neighbours + 1.
    """

    anchors: np.ndarray
    windows: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        """(N * W,) all selected rows, window by window."""
        return self.windows.reshape(-1)


def temporal_windows(
    anchors: np.ndarray, clip_ids: np.ndarray, *, neighbours: int, stride: int = 1
) -> np.ndarray:
    """Windows of ``neighbours + 1`` rows spaced ``stride`` apart around each anchor, inside the
    anchor's clip (rows of a clip contiguous, in time order, at least ``(neighbours + 1) *
    stride`` of them); the anchor sits at
    position ``neighbours // 2`` unless a clip boundary shifts the window. (N, W) int64."""
    clip_ids = np.asarray(clip_ids)
    starts = np.searchsorted(clip_ids, clip_ids[anchors], side="left")
    ends = np.searchsorted(clip_ids, clip_ids[anchors], side="right")
    span = neighbours * stride
    if np.any(ends - starts < span + stride):
        raise ValueError(f"an anchor's clip is shorter than {span + stride} rows (window + stride)")
    first = anchors - (neighbours // 2) * stride
    first = np.clip(first, starts, ends - 1 - span)
    # Keep the anchor on the window's stride grid.
    first = first + ((anchors - first) % stride)
    first = np.where(first + span >= ends, first - stride, first)
    return first[:, None] + stride * np.arange(neighbours + 1)[None, :]


def select_poses(
    features: np.ndarray,
    clip_ids: np.ndarray,
    *,
    anchors: int = 1500,
    neighbours: int = 9,
    stride: int = 1,
    first: int | None = None,
) -> Selection:
    """Farthest point sampling over the rows of clips of at least ``(neighbours + 1) * stride``
    rows (so every anchor's window fits on its stride grid), then the windows.

    Args:
        features: (T, D) features of every row (:func:`pose_features`).
        clip_ids: (T,) int clip index of every row; each clip's rows contiguous, in time order.
        anchors: number of anchors N.
        neighbours: temporal neighbours per anchor (window size neighbours + 1).
        stride: rows between window frames.
        first: first anchor row (default: the first eligible row).
    """
    clip_ids = np.asarray(clip_ids, dtype=np.int64)
    if clip_ids.shape != (features.shape[0],):
        raise ValueError(f"clip_ids must have shape ({features.shape[0]},), got {clip_ids.shape}")
    if np.any(np.diff(clip_ids) < 0):
        raise ValueError("clip_ids must be sorted (each clip's rows contiguous)")
    _, inverse, lengths = np.unique(clip_ids, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(lengths[inverse] >= (neighbours + 1) * stride)
    if eligible.size < anchors:
        raise ValueError(
            f"only {eligible.size} rows lie in clips of at least {(neighbours + 1) * stride} "
            f"rows (window + stride); cannot pick {anchors} anchors"
        )
    start = 0 if first is None else int(np.searchsorted(eligible, first))
    if first is not None and (start >= eligible.size or eligible[start] != first):
        raise ValueError(f"first={first} is not an eligible row")
    picks = eligible[farthest_point_sampling(features[eligible], anchors, first=start)]
    windows = temporal_windows(picks, clip_ids, neighbours=neighbours, stride=stride)
    return Selection(anchors=picks, windows=windows)


def joint_position_std(joints: np.ndarray) -> float:
    """Mean over the J x 3 coordinates of the population std over N poses; joints (N, J, 3)
    (or (N, J*3) features), metres. See the module docstring."""
    values = np.asarray(joints, dtype=np.float64).reshape(len(joints), -1)
    if values.shape[0] < 2:
        raise ValueError("the diversity of fewer than two poses is undefined")
    return float(values.std(axis=0).mean())


def diversity_ratio(joints: np.ndarray, reference: np.ndarray) -> float:
    """``joint_position_std(joints) / joint_position_std(reference)``."""
    return joint_position_std(joints) / joint_position_std(reference)


def plot_pose_distribution(
    features: np.ndarray,
    selected: np.ndarray,
    path: str | Path,
    *,
    max_background: int = 20000,
    seed: int = 0,
    title: str = "pose distribution",
) -> Path:
    """Scatter of all poses and the selected ones on the first two principal components of
    ``features`` (PCA by SVD of the centred rows); writes a PNG and returns its path.

    Args:
        features: (T, D) features of all rows.
        selected: (S,) selected row indices (e.g. :attr:`Selection.anchors`).
        max_background: at most this many random rows are drawn as the grey background.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(features, dtype=np.float64)
    centre = data.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(data), min(max_background, len(data)), replace=False)
    _, singular, basis = np.linalg.svd(data[sample] - centre, full_matrices=False)
    explained = singular[:2] ** 2 / np.sum(singular**2)
    background = (data[sample] - centre) @ basis[:2].T
    chosen = (data[np.asarray(selected)] - centre) @ basis[:2].T
    figure, axes = plt.subplots(figsize=(6, 6), dpi=120)
    axes.scatter(background[:, 0], background[:, 1], s=2, c="0.7", label=f"all ({len(data)})")
    axes.scatter(chosen[:, 0], chosen[:, 1], s=8, c="tab:red", label=f"selected ({len(chosen)})")
    axes.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    axes.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    axes.set_title(title)
    axes.legend(loc="upper right")
    axes.set_aspect("equal", adjustable="datalim")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
