"""Data: motion import (BVH, Motion-X, AMASS) to SMPL-X poses, pose selection, DrPose15K."""
from drpose.data.dataset import DrPoseDataset as DrPoseDataset
