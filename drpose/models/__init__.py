"""drpose.models: the multi-view diffusion UNet (PSHuman-compatible) and its configs."""

from drpose.models.mv_unet import MultiViewUNet

__all__ = ["MultiViewUNet"]
