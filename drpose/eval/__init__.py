"""drpose.eval: the field's metrics (metrics.py) for reconstructed meshes, joints and images."""

from drpose.eval.metrics import (
    ALIGNMENTS,
    align_mesh,
    normal_error,
    pa_mpjpe,
    point_to_surface_distance,
    similarity_procrustes,
    surface_metrics,
)
from drpose.render.image_metrics import image_metrics

__all__ = [
    "ALIGNMENTS",
    "align_mesh",
    "image_metrics",
    "normal_error",
    "pa_mpjpe",
    "point_to_surface_distance",
    "similarity_procrustes",
    "surface_metrics",
]
