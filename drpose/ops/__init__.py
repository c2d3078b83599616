"""The public ops of drpose: each has a torch reference, a C++ CPU kernel and/or a Triton kernel.

All are registered in the ``drpose`` torch op library (``torch.ops.drpose.*``) with fake
implementations, so ``torch.compile`` traces them.
"""

from drpose.ops.pose_heatmap_loss import (
    pose_heatmap_loss,
    pose_heatmap_loss_reference,
    render_heatmaps,
)
from drpose.ops.rasterize import interpolate, rasterize
from drpose.ops.row_attention import row_attention, row_attention_reference

__all__ = [
    "interpolate",
    "pose_heatmap_loss",
    "pose_heatmap_loss_reference",
    "rasterize",
    "render_heatmaps",
    "row_attention",
    "row_attention_reference",
]
