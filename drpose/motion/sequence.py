"""Motion capture in, SMPL-X pose sequences out.

Conventions of :class:`PoseSequence` (every importer converts to these):

- Rotations are axis-angle vectors in radians, SMPL-X's own parameterisation: ``global_orient``
  is the pelvis rotation in the world, ``body_pose`` the 21 body joints (SMPL-X joints 1-21, in
  SMPL-X order) relative to their parents.
- Lengths are metres. ``transl`` is SMPL-X's ``transl`` argument: the body is posed about its
  rest pelvis ``J0`` (which depends on ``betas``) and then shifted, ``x_world = R_g (x - J0) + J0
  + transl`` for a rest-pose point ``x`` after the joint rotations.
- World axes: y up, as SMPL-X's canonical rest pose (which faces +z, its left hand on +x).
  AMASS is z-up: :func:`load_amass` rotates the world by ``R_zup_to_yup`` = -90 degrees about x,
  ``(x, y, z) -> (x, z, -y)``, composing ``global_orient' = R global_orient`` and
  ``transl' = R (transl + J0) - J0`` so that the posed body is exactly the rotated one.
- Pose selection normalises the root anyway (see :mod:`drpose.motion.select`), so the world frame
  only matters for consumers that render trajectories.

Importers: :func:`load_motionx` (Motion-X ``smplx_322`` ``.npy``), :func:`load_amass` (AMASS
``.npz``, SMPL-H and SMPL-X variants), :func:`load_bvh` (any BVH skeleton, fitted with
:mod:`drpose.motion.bvh_fit`), :func:`load_motion` (by file extension), and
:func:`default_pose_sequences` (a packaged CMU sample; see ``drpose/motion/assets/README.md``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The packaged sample: CMU subject 1 clips fitted with SMPL-X (drpose/motion/assets/README.md).
DEFAULT_SAMPLE_CLIPS = ("cmu_01_01", "cmu_01_03")

NUM_BODY_JOINTS = 21
MOTIONX_DIM = 322
# Motion-X smplx_322 layout: name -> (start, stop) columns.
MOTIONX_LAYOUT: dict[str, tuple[int, int]] = {
    "global_orient": (0, 3),
    "body_pose": (3, 66),
    "left_hand_pose": (66, 111),
    "right_hand_pose": (111, 156),
    "jaw_pose": (156, 159),
    "expression": (159, 209),
    "face_shape": (209, 309),
    "transl": (309, 312),
    "betas": (312, 322),
}

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


def to_y_up(
    global_orient: np.ndarray, transl: np.ndarray, pelvis_rest: np.ndarray, rotation: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a posed SMPL-X body about the world origin by ``rotation`` (3, 3).

    ``global_orient' = rotation @ R(global_orient)``; ``transl' = rotation (transl + J0) - J0``
    with ``J0 = pelvis_rest`` (3,) or (T, 3), the rest pelvis of the body's betas.
    Returns float32 arrays (T, 3), (T, 3).
    """
    from scipy.spatial.transform import Rotation

    orient = Rotation.from_matrix(rotation) * Rotation.from_rotvec(global_orient)
    moved = (np.asarray(transl) + pelvis_rest) @ rotation.T - pelvis_rest
    return orient.as_rotvec().astype(np.float32), moved.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _rest_model_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(v_template (V,3), shapedirs (V,3,S), pelvis regressor row (V,)) of the default body."""
    from drpose.body import load_smplx

    model = load_smplx()
    return (
        model.v_template.detach().cpu().double().numpy(),
        model.shapedirs.detach().cpu().double().numpy(),
        model.J_regressor[0].detach().cpu().double().numpy(),
    )


def pelvis_rest_position(betas: np.ndarray) -> np.ndarray:
    """Rest-pose pelvis J0 (T, 3) of the default body (:func:`drpose.body.load_smplx`) for
    betas (T, S); coefficients beyond the model's shape space are ignored."""
    template, shapedirs, regressor = _rest_model_arrays()
    count = min(betas.shape[1], shapedirs.shape[2])
    pelvis_template = regressor @ template
    pelvis_dirs = np.einsum("v,vcs->cs", regressor, shapedirs[:, :, :count])
    return pelvis_template + betas[:, :count].astype(np.float64) @ pelvis_dirs.T


def load_motionx(
    path: str | Path, *, fps: float = 30.0, up_axis: str = "y", source: str | None = None
) -> PoseSequence:
    """Read a Motion-X ``smplx_322`` ``.npy`` file: (T, 322) float rows laid out as
    :data:`MOTIONX_LAYOUT` (root orient 3, body 63, hands 90, jaw 3, expression 50, face shape
    100, translation 3, betas 10).

    Motion-X's processed release is y-up at 30 fps (its own HumanML3D-style processing applies no
    axis change); the AIST subset needs Motion-X's ``aist.py`` translation fix (/94, z flip) first,
    as Motion-X's instructions say. Pass ``up_axis="z"`` for data in a z-up world. The face shape
    block has no SMPL-X parameter and is dropped.
    """
    data = np.load(path, allow_pickle=False)
    if data.ndim != 2 or data.shape[1] != MOTIONX_DIM:
        raise ValueError(f"{path}: Motion-X smplx_322 rows must be (T, 322), got {data.shape}")
    columns = {name: data[:, a:b] for name, (a, b) in MOTIONX_LAYOUT.items()}
    global_orient, transl = columns["global_orient"], columns["transl"]
    if up_axis == "z":
        pelvis = pelvis_rest_position(columns["betas"])
        global_orient, transl = to_y_up(global_orient, transl, pelvis, R_ZUP_TO_YUP)
    elif up_axis != "y":
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    return PoseSequence(
        global_orient=global_orient,
        body_pose=columns["body_pose"],
        transl=transl,
        betas=columns["betas"],
        fps=fps,
        source=source or str(path),
        left_hand_pose=columns["left_hand_pose"],
        right_hand_pose=columns["right_hand_pose"],
        jaw_pose=columns["jaw_pose"],
        expression=columns["expression"],
    )


def load_amass(path: str | Path, *, num_betas: int = 10, source: str | None = None) -> PoseSequence:
    """Read an AMASS ``.npz`` (z-up) and convert it to the y-up SMPL-X convention.

    Keys: ``poses`` (T, 156) SMPL-H [root 3, body 63, hands 90] or (T, 165) SMPL-X [root 3,
    body 63, jaw 3, eyes 6, hands 90]; ``trans`` (T, 3); ``betas`` (S,); ``mocap_framerate``
    (SMPL-H release) or ``mocap_frame_rate`` (SMPL-X release). The 21 body joints are the same in
    SMPL-H and SMPL-X. SMPL-H betas live in another shape space and are replaced by zeros; SMPL-X
    betas are kept (first ``num_betas``). The z-up -> y-up rotation uses the rest pelvis of the
    default body for these betas (:func:`pelvis_rest_position`).
    """
    with np.load(path, allow_pickle=False) as data:
        missing = {"poses", "trans", "betas"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not an AMASS motion file, missing keys {sorted(missing)}")
        poses, trans, betas = data["poses"], data["trans"], data["betas"]
        rate_keys = [k for k in ("mocap_framerate", "mocap_frame_rate") if k in data.files]
        rate_key = rate_keys[0] if rate_keys else None
        if rate_key is None:
            raise ValueError(f"{path}: no 'mocap_framerate' or 'mocap_frame_rate' key")
        fps = float(data[rate_key])
    frames = poses.shape[0]
    if poses.ndim != 2 or poses.shape[1] not in (156, 165):
        raise ValueError(
            f"{path}: poses must be (T, 156) SMPL-H or (T, 165) SMPL-X, got {poses.shape}"
        )
    if poses.shape[1] == 165:
        hands, jaw = poses[:, 75:165], poses[:, 66:69]
        shape = np.zeros((frames, num_betas))
        shape[:, : min(num_betas, betas.shape[-1])] = betas.reshape(-1)[:num_betas]
    else:
        hands, jaw, shape = poses[:, 66:156], None, np.zeros((frames, num_betas))
    pelvis = pelvis_rest_position(shape)
    global_orient, transl = to_y_up(poses[:, :3], trans, pelvis, R_ZUP_TO_YUP)
    return PoseSequence(
        global_orient=global_orient,
        body_pose=poses[:, 3:66],
        transl=transl,
        betas=shape,
        fps=fps,
        source=source or str(path),
        left_hand_pose=hands[:, :45],
        right_hand_pose=hands[:, 45:],
        jaw_pose=jaw,
    )


def load_motion(path: str | Path, **options) -> PoseSequence:
    """Dispatch on the extension: ``.npy`` Motion-X, ``.npz`` AMASS or a saved
    :class:`PoseSequence`, ``.bvh`` BVH (options go to the loader)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_motionx(path, **options)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            is_amass = "poses" in data.files
        return load_amass(path, **options) if is_amass else PoseSequence.load(path)
    if suffix == ".bvh":
        return load_bvh(path, **options)[0]
    raise ValueError(f"{path}: unknown motion format {suffix!r} (expected .npy, .npz or .bvh)")


def load_bvh(path: str | Path, **options):
    """Read a BVH file and fit SMPL-X to it: returns ``(PoseSequence, FitReport)``.

    See :func:`drpose.motion.bvh_fit.fit_bvh` for the options (skeleton map, units, frame step,
    optimisation settings) and the report (per-joint error in mm).
    """
    from drpose.motion.bvh_fit import fit_bvh

    return fit_bvh(path, **options)


def default_pose_sequences() -> list[PoseSequence]:
    """The packaged sample, one sequence per clip: CMU subject 1 clips fitted with SMPL-X at
    30 fps (``drpose/motion/assets/README.md``; regenerate with ``python -m
    drpose.motion.make_sample``). Needs no download or apt package."""
    paths = [ASSETS_DIR / f"{clip}.npz" for clip in DEFAULT_SAMPLE_CLIPS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{missing} missing; regenerate with `python -m drpose.motion.make_sample` "
            "(needs the apt package assimp-testmodels)"
        )
    return [PoseSequence.load(path) for path in paths]
