"""Joint sets of the SMPL-X body, as data.

Indices refer to the joint tensor that ``smplx.SMPLX.forward`` returns, shape (B, 127, 3) with
the default options (``use_hands=True``, ``use_feet_keypoints=True``, ``use_face_contour=False``):

- 0-54: the 55 skeleton joints of the kinematic tree (:data:`SMPLX_JOINT_NAMES`,
  :data:`SMPLX_PARENTS`),
- 55-75: 21 joints read off single surface vertices (``smplx.vertex_ids.vertex_ids["smplx"]``):
  nose, eyes, ears, big/small toes, heels, fingertips (:data:`SMPLX_VERTEX_JOINT_NAMES`),
- 76-126: 51 face landmarks (barycentric points on the surface).

Coordinates are metres in the body frame of SMPL-X: y up, the body faces +z, the subject's left
is +x.
"""

from __future__ import annotations

from dataclasses import dataclass

SMPLX_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "jaw", "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3", "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3", "right_middle1", "right_middle2",
    "right_middle3", "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1",
    "right_ring2", "right_ring3", "right_thumb1", "right_thumb2", "right_thumb3",
)  # fmt: skip
"""The 55 skeleton joints of SMPL-X, in the model's order."""

SMPLX_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip
"""Parent of each skeleton joint (-1 for the root, the pelvis): the SMPL-X kinematic tree."""

SMPLX_VERTEX_JOINT_NAMES: tuple[str, ...] = (
    "nose", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel",
    "left_thumb", "left_index", "left_middle", "left_ring", "left_pinky",
    "right_thumb", "right_index", "right_middle", "right_ring", "right_pinky",
)  # fmt: skip
"""Names of output joints 55-75 (read off surface vertices), in smplx's order."""

NUM_SMPLX_JOINTS = len(SMPLX_JOINT_NAMES)
"""55 skeleton joints."""

NUM_FACE_LANDMARKS = 51
"""Static face landmarks appended after the vertex joints (iBUG-68 without the contour)."""

NUM_OUTPUT_JOINTS = NUM_SMPLX_JOINTS + len(SMPLX_VERTEX_JOINT_NAMES) + NUM_FACE_LANDMARKS
"""127: the joint count ``smplx.SMPLX`` returns with default options."""


@dataclass(frozen=True)
class JointSet:
    """A named subset of the output joints.

    Attributes:
        names: one name per channel.
        indices: for each channel, the index into smplx's output joints (B, 127, 3).
    """

    names: tuple[str, ...]
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.indices):
            raise ValueError(f"JointSet: {len(self.names)} names but {len(self.indices)} indices")

    def __len__(self) -> int:
        return len(self.indices)


POSESCORE_JOINTS = JointSet(names=SMPLX_JOINT_NAMES[:23], indices=tuple(range(23)))
"""The 23 PoseScore channels: SMPL-X skeleton joints 0-22 (pelvis ... jaw)."""

_VERTEX_JOINT = {name: NUM_SMPLX_JOINTS + i for i, name in enumerate(SMPLX_VERTEX_JOINT_NAMES)}
_SKELETON_JOINT = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}

COCO17 = JointSet(
    names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    indices=(
        _VERTEX_JOINT["nose"], _VERTEX_JOINT["left_eye"], _VERTEX_JOINT["right_eye"],
        _VERTEX_JOINT["left_ear"], _VERTEX_JOINT["right_ear"],
        _SKELETON_JOINT["left_shoulder"], _SKELETON_JOINT["right_shoulder"],
        _SKELETON_JOINT["left_elbow"], _SKELETON_JOINT["right_elbow"],
        _SKELETON_JOINT["left_wrist"], _SKELETON_JOINT["right_wrist"],
        _SKELETON_JOINT["left_hip"], _SKELETON_JOINT["right_hip"],
        _SKELETON_JOINT["left_knee"], _SKELETON_JOINT["right_knee"],
        _SKELETON_JOINT["left_ankle"], _SKELETON_JOINT["right_ankle"],
    ),
)  # fmt: skip
"""COCO-17 keypoints in COCO's order, as indices into smplx's output joints: face points from the
vertex joints (55-59), limbs from the skeleton joints."""
