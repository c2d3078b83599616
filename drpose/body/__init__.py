"""SMPL-X bodies through the ``smplx`` package: loading, posing, joint sets, a stand-in model.

Without the licensed SMPL-X files, :func:`load_smplx` uses a generated stand-in model file
(:mod:`drpose.body.standin`); pass ``model_dir`` or set ``DRPOSE_SMPLX_DIR`` to use the real one.
"""

from drpose.body.joints import (
    COCO17,
    POSESCORE_JOINTS,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
    JointSet,
)
from drpose.body.model import (
    BodyOutput,
    StandInModelWarning,
    load_smplx,
    posed_body,
    resolve_model_dir,
    standin_model_dir,
)

__all__ = [
    "COCO17",
    "POSESCORE_JOINTS",
    "SMPLX_JOINT_NAMES",
    "SMPLX_PARENTS",
    "BodyOutput",
    "JointSet",
    "StandInModelWarning",
    "load_smplx",
    "posed_body",
    "resolve_model_dir",
    "standin_model_dir",
]
