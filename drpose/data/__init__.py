"""Data: DrPose15K from pose sequences (:mod:`drpose.motion`): building, synthesis, datasets."""
from drpose.data.dataset import DrPoseDataset as DrPoseDataset
