"""Real motion split by pose difficulty: the pose pools of :mod:`drpose.eval.experiment`.

Difficulty (:func:`pose_difficulty`): the mean over SMPL-X body joints 1-21 of the distance, in
metres, between a pose's joints and the rest pose's joints (betas = 0), both pelvis-relative and
turned to a common heading (:func:`drpose.motion.select.pose_features`: rotation about the
vertical only, so bending over or lying down counts as far from standing).

Split (:func:`split_poses`), deterministic:

1. every clip is cut into consecutive windows of ``window`` rows (a shorter tail belongs to no
   window and is used by nothing);
2. a window is *hard* when its mean difficulty is at least the ``hard_quantile`` of the
   per-row difficulties; ``held_out_windows`` of the hard windows, evenly spaced in the order of
   difficulty, are held out, and ``per_window`` evenly spaced rows of each are the held-out hard
   poses;
3. the ``gap`` windows on each side of a held-out window (same clip) are used by nothing, so no
   training pose is a neighbouring frame of a held-out one;
4. among the rows of the remaining windows: the *easy* pool (base model and the reward's g_skel)
   is ``easy`` rows farthest-point-sampled among those of difficulty at most the
   ``easy_quantile``; the *hard* pool (DrPose, the upper bound) ``hard`` rows among those of
   difficulty at least the ``hard_quantile``; the *judge* pool (the judge's g_skel) ``judge`` rows
   among the rest of difficulty above the ``easy_quantile`` (disjoint from both). A pool gets
   fewer rows when there are fewer candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drpose.motion.select import farthest_point_sampling, joint_position_std, pose_features
from drpose.motion.sequence import PoseSequence

POOLS = ("easy", "hard", "judge", "held_out")


def rest_features() -> np.ndarray:
    """(63,) selection features of the rest pose (zero rotations)."""
    rest = PoseSequence(global_orient=np.zeros((1, 3)), body_pose=np.zeros((1, 63)),
                        transl=np.zeros((1, 3)), betas=np.zeros((1, 10)), fps=30.0, source="rest")
    return pose_features(rest)[0]


def pose_difficulty(features: np.ndarray) -> np.ndarray:
    """(T,) mean joint distance (metres) from the rest pose of features (T, 63) (module
    docstring)."""
    offsets = (np.asarray(features) - rest_features()).reshape(len(features), -1, 3)
    return np.linalg.norm(offsets, axis=-1).mean(axis=1)


@dataclass
class SplitConfig:
    """Options of :func:`split_poses` (module docstring)."""

    window: int = 30
    gap: int = 1
    easy_quantile: float = 0.4
    hard_quantile: float = 0.6
    held_out_windows: int = 8
    per_window: int = 2
    easy: int = 96
    hard: int = 48
    judge: int = 64

    def __post_init__(self) -> None:
        if not 0 <= self.easy_quantile <= self.hard_quantile <= 1:
            raise ValueError(f"need 0 <= easy_quantile ({self.easy_quantile}) <= hard_quantile "
                             f"({self.hard_quantile}) <= 1")
        if self.window < 1 or self.per_window < 1 or self.per_window > self.window:
            raise ValueError(f"need window >= per_window >= 1, got window={self.window}, "
                             f"per_window={self.per_window}")


@dataclass
class PoseSplit:
    """Row indices (into the concatenated clips) of each pool, and the windows.

    windows: (M, 3) int64 ``(clip, first row, stop row)`` of every window. held_windows: indices
    into ``windows`` of the held-out ones; unused_windows: those of the gaps around them.
    """

    easy: np.ndarray
    hard: np.ndarray
    judge: np.ndarray
    held_out: np.ndarray
    windows: np.ndarray
    held_windows: np.ndarray
    unused_windows: np.ndarray
    easy_threshold: float
    hard_threshold: float

    def pool(self, name: str) -> np.ndarray:
        if name not in POOLS:
            raise ValueError(f"unknown pool {name!r}; pools: {POOLS}")
        return getattr(self, name)

    def training_rows(self) -> np.ndarray:
        """Every row some stage trains on (easy, hard and judge pools)."""
        return np.concatenate([self.easy, self.hard, self.judge])

    def rows_of(self, windows: np.ndarray) -> np.ndarray:
        """All rows of the given windows (indices into :attr:`windows`)."""
        spans = [np.arange(start, stop) for _, start, stop in self.windows[windows]]
        return np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)


def clip_windows(clip_ids: np.ndarray, window: int) -> np.ndarray:
    """(M, 3) ``(clip, first, stop)`` of the consecutive ``window``-row windows of each clip
    (rows of a clip contiguous)."""
    clip_ids = np.asarray(clip_ids)
    if np.any(np.diff(clip_ids) < 0):
        raise ValueError("clip_ids must be sorted (each clip's rows contiguous)")
    out = []
    for clip in np.unique(clip_ids):
        rows = np.flatnonzero(clip_ids == clip)
        first = rows[0]
        for start in range(first, rows[-1] + 1 - window + 1, window):
            out.append((clip, start, start + window))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def _evenly(count: int, available: int) -> np.ndarray:
    """``count`` evenly spaced indices in ``range(available)`` (all when fewer)."""
    if count >= available:
        return np.arange(available)
    return np.round(np.linspace(0, available - 1, count)).astype(np.int64)


def _fps(features: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    if count <= 0 or candidates.size == 0:
        return np.zeros(0, dtype=np.int64)
    picks = farthest_point_sampling(features[candidates], min(count, candidates.size))
    return candidates[picks]


def split_poses(features: np.ndarray, clip_ids: np.ndarray, config: SplitConfig) -> PoseSplit:
    """The pools of rows of ``features`` (T, 63) with clip ids (T,) (module docstring)."""
    difficulty = pose_difficulty(features)
    easy_threshold = float(np.quantile(difficulty, config.easy_quantile))
    hard_threshold = float(np.quantile(difficulty, config.hard_quantile))
    windows = clip_windows(clip_ids, config.window)
    if len(windows) == 0:
        raise ValueError(f"no clip holds a window of {config.window} rows")
    window_difficulty = np.array([difficulty[a:b].mean() for _, a, b in windows])
    hard_windows = np.flatnonzero(window_difficulty >= hard_threshold)
    if hard_windows.size == 0:
        raise ValueError("no window is hard: lower hard_quantile or window")
    by_difficulty = hard_windows[np.argsort(-window_difficulty[hard_windows], kind="stable")]
    held_windows = np.sort(by_difficulty[_evenly(config.held_out_windows, by_difficulty.size)])
    unused = set()
    for w in held_windows:
        for other in range(w - config.gap, w + config.gap + 1):
            if 0 <= other < len(windows) and windows[other, 0] == windows[w, 0] and other != w:
                unused.add(other)
    unused_windows = np.array(sorted(unused - set(held_windows.tolist())), dtype=np.int64)
    held_out = np.concatenate([
        windows[w, 1] + _evenly(config.per_window, config.window) for w in held_windows])
    excluded = set(held_windows.tolist()) | set(unused_windows.tolist())
    free_windows = np.array([w for w in range(len(windows)) if w not in excluded], dtype=np.int64)
    spans = [np.arange(a, b) for _, a, b in windows[free_windows]]
    free = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
    easy = _fps(features, free[difficulty[free] <= easy_threshold], config.easy)
    hard = _fps(features, free[difficulty[free] >= hard_threshold], config.hard)
    taken = np.concatenate([easy, hard])
    rest = free[(difficulty[free] > easy_threshold) & ~np.isin(free, taken)]
    judge = _fps(features, rest, config.judge)
    return PoseSplit(easy=easy, hard=hard, judge=judge, held_out=held_out, windows=windows,
                     held_windows=held_windows, unused_windows=unused_windows,
                     easy_threshold=easy_threshold, hard_threshold=hard_threshold)


def pool_summary(features: np.ndarray, split: PoseSplit) -> dict[str, dict[str, float]]:
    """Per pool: ``poses``, mean / min / max ``difficulty_m`` and the paper's diversity
    ``joint_std_m`` (:func:`drpose.motion.select.joint_position_std` of the features)."""
    difficulty = pose_difficulty(features)
    out = {}
    for name in POOLS:
        rows = split.pool(name)
        values = difficulty[rows]
        out[name] = {
            "poses": int(rows.size),
            "difficulty_m": float(values.mean()) if rows.size else float("nan"),
            "difficulty_min_m": float(values.min()) if rows.size else float("nan"),
            "difficulty_max_m": float(values.max()) if rows.size else float("nan"),
            "joint_std_m": joint_position_std(features[rows]) if rows.size > 1 else float("nan"),
        }
    return out
