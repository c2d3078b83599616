"""Motion files to :class:`~drpose.motion.sequence.PoseSequence`: :func:`load_motionx` (Motion-X
``smplx_322`` ``.npy``), :func:`load_amass` (AMASS ``.npz``, SMPL-H and SMPL-X variants),
:func:`load_bvh` (any BVH skeleton, fitted with :mod:`drpose.motion.bvh_fit`), :func:`load_motion`
(by file extension), and :func:`default_pose_sequences` (a packaged CMU sample; see
``drpose/motion/assets/README.md``). Conventions: :mod:`drpose.motion.sequence`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from drpose.motion.bvh_fit import FitReport, fit_bvh
from drpose.motion.sequence import R_ZUP_TO_YUP, PoseSequence

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The packaged sample: CMU subject 1 clips fitted with SMPL-X (drpose/motion/assets/README.md).
DEFAULT_SAMPLE_CLIPS = ("cmu_01_01", "cmu_01_03")

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
    if trans.shape != (frames, 3):
        raise ValueError(f"{path}: trans must be ({frames}, 3), one row per row of poses, got "
                         f"{trans.shape}; the file is damaged or not an AMASS clip")
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
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file (.bvh, .npz, .npy or 'default')")
    if suffix in (".npy", ".npz") and not _is_numpy_file(path, suffix):
        raise ValueError(f"{path}: not a numpy {suffix} file (no "
                         f"{'zip archive' if suffix == '.npz' else '.npy header'} inside); pass "
                         "an AMASS / PoseSequence .npz or a Motion-X .npy")
    if suffix == ".npy":
        return load_motionx(path, **options)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            is_amass = "poses" in data.files
        return load_amass(path, **options) if is_amass else PoseSequence.load(path)
    if suffix == ".bvh":
        return load_bvh(path, **options)[0]
    raise ValueError(f"{path}: unknown motion format {suffix!r} (expected .npy, .npz or .bvh)")


def _is_numpy_file(path: Path, suffix: str) -> bool:
    """True when ``path`` starts as a ``.npz`` (zip) or ``.npy`` file does."""
    with path.open("rb") as file:
        start = file.read(6)
    return start.startswith(b"PK\x03\x04") if suffix == ".npz" else start == b"\x93NUMPY"


def load_bvh(path: str | Path, **options) -> tuple[PoseSequence, FitReport]:
    """Read a BVH file and fit SMPL-X to it: returns ``(PoseSequence, FitReport)``.

    See :func:`drpose.motion.bvh_fit.fit_bvh` for the options (skeleton map, units, frame step,
    optimisation settings) and the report (per-joint error in mm).
    """
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
