"""drpose.eval: the field's metrics (metrics.py) for reconstructed meshes, joints and images.

Importing the package loads nothing heavy (``python -m drpose.eval`` sets OpenMP's wait policy
before torch loads); the metrics are imported on first use.
"""

import importlib
from typing import Any

_HOMES = {
    "ALIGNMENTS": "drpose.eval.metrics",
    "align_mesh": "drpose.eval.metrics",
    "image_metrics": "drpose.render.image_metrics",
    "normal_error": "drpose.eval.metrics",
    "pa_mpjpe": "drpose.eval.metrics",
    "point_to_surface_distance": "drpose.eval.metrics",
    "similarity_procrustes": "drpose.eval.metrics",
    "surface_metrics": "drpose.eval.metrics",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'drpose.eval' has no attribute {name!r}")
