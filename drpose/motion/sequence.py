"""SMPL-X pose sequences, the one currency of :mod:`drpose.motion`.

Conventions of :class:`PoseSequence` (every importer in :mod:`drpose.motion.load` converts to
these):

- Rotations are axis-angle vectors in radians, SMPL-X's own parameterisation: ``global_orient``
  is the pelvis rotation in the world, ``body_pose`` the 21 body joints (SMPL-X joints 1-21, in
  SMPL-X order) relative to their parents.
- Lengths are metres. ``transl`` is SMPL-X's ``transl`` argument: the body is posed about its
  rest pelvis ``J0`` (which depends on ``betas``) and then shifted, ``x_world = R_g (x - J0) + J0
  + transl`` for a rest-pose point ``x`` after the joint rotations.
- World axes: y up, as SMPL-X's canonical rest pose (which faces +z, its left hand on +x).
  AMASS is z-up: :func:`~drpose.motion.load.load_amass` rotates the world by ``R_zup_to_yup``
  = -90 degrees about x, ``(x, y, z) -> (x, z, -y)``, composing
  ``global_orient' = R global_orient`` and ``transl' = R (transl + J0) - J0`` so that the posed
  body is exactly the rotated one.
- Pose selection normalises the root anyway (see :mod:`drpose.motion.select`), so the world frame
  only matters for consumers that render trajectories.

Importers: :mod:`drpose.motion.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

NUM_BODY_JOINTS = 21

# Rotation taking a z-up world to a y-up one: (x, y, z) -> (x, z, -y).
R_ZUP_TO_YUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

_PER_FRAME_OPTIONAL = ("left_hand_pose", "right_hand_pose", "jaw_pose", "expression")


@dataclass
class PoseSequence:
    """SMPL-X parameters of one clip, one row per frame (conventions: module docstring).

    Attributes:
        global_orient: (T, 3) float32 axis-angle of the pelvis in the world.
        body_pose: (T, 63) float32 axis-angle of SMPL-X body joints 1-21.
        transl: (T, 3) float32 metres (SMPL-X ``transl``), y up.
        betas: (T, S) float32 shape coefficients (S = 10 unless the source says otherwise).
        fps: frames per second of the rows as stored.
        source: where the clip came from (path or label).
        frame_ids: (T,) int64 frame index of each row in the source clip.
        left_hand_pose, right_hand_pose: (T, 45) float32 axis-angle (15 joints each), or None.
        jaw_pose: (T, 3) float32 axis-angle, or None.
        expression: (T, E) float32 expression coefficients, or None.
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    transl: np.ndarray
    betas: np.ndarray
    fps: float
    source: str
    frame_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    left_hand_pose: np.ndarray | None = None
    right_hand_pose: np.ndarray | None = None
    jaw_pose: np.ndarray | None = None
    expression: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.global_orient = _as_rows(self.global_orient, 3, "global_orient")
        frames = self.global_orient.shape[0]
        self.body_pose = _as_rows(self.body_pose, 3 * NUM_BODY_JOINTS, "body_pose", frames)
        self.transl = _as_rows(self.transl, 3, "transl", frames)
        betas = np.asarray(self.betas, dtype=np.float32)
        if betas.ndim == 1:
            betas = np.broadcast_to(betas, (frames, betas.shape[0])).copy()
        self.betas = _as_rows(betas, betas.shape[-1], "betas", frames)
        if self.frame_ids.size == 0 and frames:
            self.frame_ids = np.arange(frames, dtype=np.int64)
        self.frame_ids = np.asarray(self.frame_ids, dtype=np.int64)
        if self.frame_ids.shape != (frames,):
            raise ValueError(f"frame_ids must have shape ({frames},), got {self.frame_ids.shape}")
        widths = {"left_hand_pose": 45, "right_hand_pose": 45, "jaw_pose": 3}
        for name in _PER_FRAME_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                width = widths.get(name, np.shape(value)[-1] if np.ndim(value) == 2 else -1)
                setattr(self, name, _as_rows(value, width, name, frames))
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def __len__(self) -> int:
        return int(self.global_orient.shape[0])

    def take(self, rows: np.ndarray | slice) -> PoseSequence:
        """The sub-sequence of the given rows (indices or slice); frame_ids follow the rows."""
        changes = {
            f.name: getattr(self, f.name)[rows]
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        return replace(self, **changes)

    def save(self, path: str | Path) -> None:
        """Write a compressed ``.npz`` (float32 arrays; absent optional fields are omitted)."""
        arrays = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        np.savez_compressed(path, fps=np.float64(self.fps), source=np.str_(self.source), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> PoseSequence:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            values = {name: data[name] for name in data.files}
        values["fps"] = float(values["fps"])
        values["source"] = str(values["source"])
        return cls(**values)


def _as_rows(value: np.ndarray, width: int, name: str, frames: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    expected = f"({'T' if frames is None else frames}, {width})"
    if array.ndim != 2 or array.shape[1] != width or (frames is not None and len(array) != frames):
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains non-finite values")
    return np.ascontiguousarray(array)


def concatenate(sequences: list[PoseSequence]) -> tuple[PoseSequence, np.ndarray]:
    """Stack clips into one sequence plus a (T,) int64 clip id per row (for pose selection).

    Optional fields are kept only when every clip has them; betas are cut to the smallest width.
    The result's ``fps`` is the first clip's, its ``source`` lists the clips.
    """
    if not sequences:
        raise ValueError("concatenate needs at least one sequence")
    width = min(s.betas.shape[1] for s in sequences)
    stacked: dict[str, np.ndarray | None] = {}
    for name in ("global_orient", "body_pose", "transl", "frame_ids", *_PER_FRAME_OPTIONAL):
        parts = [getattr(s, name) for s in sequences]
        if any(p is None for p in parts) or len({p.shape[1:] for p in parts}) > 1:
            stacked[name] = None
        else:
            stacked[name] = np.concatenate(parts)
    clip_ids = np.concatenate([np.full(len(s), i, dtype=np.int64) for i, s in enumerate(sequences)])
    merged = PoseSequence(
        betas=np.concatenate([s.betas[:, :width] for s in sequences]),
        fps=sequences[0].fps,
        source=";".join(s.source for s in sequences),
        **stacked,
    )
    return merged, clip_ids
