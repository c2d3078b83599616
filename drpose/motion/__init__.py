"""Motion: motion capture (BVH, Motion-X, AMASS) to SMPL-X pose sequences, fitting, pose selection.

Imports body only; :mod:`drpose.data` builds DrPose15K from what this package returns.
"""
