"""Data: DrPose15K from pose sequences (:mod:`drpose.motion`): building, synthesis, datasets.

Importing the package loads nothing heavy (``python -m drpose.data`` sets OpenMP's wait policy
before torch loads); ``DrPoseDataset`` is imported on first use.
"""

from typing import Any

__all__ = ["DrPoseDataset"]


def __getattr__(name: str) -> Any:
    if name == "DrPoseDataset":
        from drpose.data.dataset import DrPoseDataset

        return DrPoseDataset
    raise AttributeError(f"module 'drpose.data' has no attribute {name!r}")
