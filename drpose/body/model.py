"""Loading SMPL-X through the ``smplx`` package, and posing it.

The model folder is the one that contains ``smplx/`` (``<dir>/smplx/SMPLX_NEUTRAL.npz``), as
``smplx.create(model_path=<dir>, model_type="smplx")`` expects. It is, in order: the argument,
the environment variable ``DRPOSE_SMPLX_DIR``, or the cached stand-in model
(:mod:`drpose.body.standin`, generated on first use; a notice says so once per process).
"""

from __future__ import annotations

import fcntl
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import smplx
import torch

MODEL_DIR_ENV = "DRPOSE_SMPLX_DIR"
CACHE_ENV = "DRPOSE_CACHE"
GENDERS = ("neutral", "male", "female")


class StandInModelWarning(UserWarning):
    """Issued (once) when drpose falls back to the stand-in body model."""


_notice_given = False


def cache_dir() -> Path:
    """drpose's cache folder: ``$DRPOSE_CACHE``, else ``~/.cache/drpose``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "drpose")


def standin_model_dir(cache: str | os.PathLike | None = None) -> Path:
    """Folder holding the stand-in ``smplx/SMPLX_NEUTRAL.npz``, generated if not cached yet.

    The file lives in ``<cache>/standin/<generator version>/``, so a changed generator builds a new
    one. Concurrent callers wait on a lock file instead of generating it twice.

    Args:
        cache: cache folder; default :func:`cache_dir`.
    """
    from drpose.body import standin  # the generator's dependencies load only when needed

    folder = Path(cache) if cache is not None else cache_dir()
    folder = folder / "standin" / standin.generator_version()
    target = folder / standin.MODEL_FILE
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_file():
                standin.write_standin(folder)
    return folder


def resolve_model_dir(model_dir: str | os.PathLike | None = None) -> Path:
    """The SMPL-X model folder to use: model_dir, else $DRPOSE_SMPLX_DIR, else the stand-in."""
    global _notice_given
    if model_dir is not None:
        return Path(model_dir)
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    folder = standin_model_dir()
    if not _notice_given:
        _notice_given = True
        warnings.warn(
            f"no SMPL-X model given (argument or {MODEL_DIR_ENV}); using the generated STAND-IN "
            f"body model in {folder} (not the licensed SMPL-X; see drpose.body.standin for how "
            "to use the real one)",
            StandInModelWarning,
            stacklevel=3,
        )
    return folder


def model_file(model_dir: str | os.PathLike, gender: str = "neutral") -> Path:
    """Path of the model file for a gender inside a model folder (``.npz``, or ``.pkl``)."""
    folder = Path(model_dir) / "smplx"
    npz = folder / f"SMPLX_{gender.upper()}.npz"
    pkl = npz.with_suffix(".pkl")
    return pkl if not npz.is_file() and pkl.is_file() else npz


def load_smplx(
    model_dir: str | os.PathLike | None = None,
    *,
    gender: str = "neutral",
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_betas: int = 10,
    num_expression_coeffs: int = 10,
    use_pca: bool = False,
    flat_hand_mean: bool = False,
) -> smplx.SMPLX:
    """Load an SMPL-X body model with the ``smplx`` package.

    Args:
        model_dir: folder containing ``smplx/SMPLX_<GENDER>.npz`` (see :func:`resolve_model_dir`).
        gender: "neutral", "male" or "female" (the stand-in has only "neutral").
        batch_size: batch size of the model's own default parameters.
        device, dtype: where and in what precision the model's buffers live.
        num_betas, num_expression_coeffs: shape / expression coefficients used.
        use_pca: hand poses as PCA coefficients (else 45 axis-angle values per hand).
        flat_hand_mean: if False (smplx's default) zero hand pose means the model's mean hand.

    Raises:
        FileNotFoundError: the folder or the model file is missing (the message names the path
            expected).
        ValueError: unknown gender.
    """
    if gender not in GENDERS:
        raise ValueError(f"gender must be one of {GENDERS}, got {gender!r}")
    folder = resolve_model_dir(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"SMPL-X model folder {folder} does not exist; expected {folder / 'smplx'}/"
            f"SMPLX_{gender.upper()}.npz (set {MODEL_DIR_ENV} or pass model_dir; without either "
            "drpose uses its stand-in model)"
        )
    path = model_file(folder, gender)
    if not path.is_file():
        raise FileNotFoundError(
            f"SMPL-X model file {path} does not exist (model folder {folder}; expected the "
            f"layout <dir>/smplx/SMPLX_{gender.upper()}.npz as in the official SMPL-X download)"
        )
    model = smplx.SMPLX(
        str(path.parent),
        gender=gender,
        ext=path.suffix[1:],
        batch_size=batch_size,
        dtype=dtype,
        num_betas=num_betas,
        num_expression_coeffs=num_expression_coeffs,
        use_pca=use_pca,
        flat_hand_mean=flat_hand_mean,
    )
    return model.to(device)


@dataclass(frozen=True)
class BodyOutput:
    """A posed body.

    Attributes:
        vertices: (B, 10475, 3) metres.
        joints: (B, 127, 3) metres, smplx's output joints (see :mod:`drpose.body.joints`).
        faces: (F, 3) int64 triangle indices (F = 20908 for SMPL-X).
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    faces: torch.Tensor


def posed_body(
    model: smplx.SMPLX,
    body_pose: torch.Tensor,
    global_orient: torch.Tensor | None = None,
    betas: torch.Tensor | None = None,
    transl: torch.Tensor | None = None,
    **kwargs: torch.Tensor,
) -> BodyOutput:
    """Pose an SMPL-X model for a batch of poses.

    Args:
        model: from :func:`load_smplx`.
        body_pose: (B, 63) axis-angle (radians) of body joints 1-21, in the model's dtype/device.
        global_orient: (B, 3) root rotation, default zeros.
        betas: (B, num_betas) shape, default zeros.
        transl: (B, 3) translation (m), default zeros.
        **kwargs: further smplx inputs (left_hand_pose, right_hand_pose, jaw_pose, leye_pose,
            reye_pose, expression), each (B, ...); missing ones are zeros.

    Returns:
        :class:`BodyOutput` with vertices (B, V, 3), joints (B, 127, 3), faces (F, 3) int64.
    """
    if body_pose.ndim != 2 or body_pose.shape[1] != 63:
        raise ValueError(f"body_pose must have shape (B, 63), got {tuple(body_pose.shape)}")
    batch = body_pose.shape[0]
    like = {"dtype": body_pose.dtype, "device": body_pose.device}
    hand_dim = model.num_pca_comps if model.use_pca else 45
    sizes = {
        "global_orient": 3, "betas": model.num_betas, "transl": 3,
        "left_hand_pose": hand_dim, "right_hand_pose": hand_dim, "jaw_pose": 3,
        "leye_pose": 3, "reye_pose": 3, "expression": model.num_expression_coeffs,
    }  # fmt: skip
    given = {"global_orient": global_orient, "betas": betas, "transl": transl, **kwargs}
    unknown = set(given) - set(sizes)
    if unknown:
        raise TypeError(f"posed_body: unknown inputs {sorted(unknown)}")
    inputs = {}
    for name, size in sizes.items():
        value = given.get(name)
        if value is None:
            value = torch.zeros(batch, size, **like)
        elif tuple(value.shape) != (batch, size):
            raise ValueError(f"{name} must have shape ({batch}, {size}), got {tuple(value.shape)}")
        inputs[name] = value
    out = model(body_pose=body_pose, return_verts=True, **inputs)
    return BodyOutput(vertices=out.vertices, joints=out.joints, faces=model.faces_tensor)
