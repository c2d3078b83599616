"""drpose.models: the multi-view diffusion UNet (PSHuman-compatible) and its configs."""

from drpose.models.mv_unet import MultiViewUNet
from drpose.models.skeleton import SkeletonNet

__all__ = ["MultiViewUNet", "SkeletonNet"]
