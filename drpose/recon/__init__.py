"""Views -> textured watertight mesh: PSHuman's explicit carving on any machine.

:func:`prepare_views` (un-mirror, decode) -> :func:`reconstruct` (SMPL-X fit, carving with
remeshing, screened Poisson, colour projection). See :mod:`drpose.recon.reconstruct`.
"""

from drpose.recon.carve import CarveConfig, CarveResult, carve, remesh
from drpose.recon.fit import FitConfig, FitResult, fit_smplx_to_views
from drpose.recon.losses import LossWeights, ViewTargets
from drpose.recon.reconstruct import ReconConfig, ReconResult, reconstruct
from drpose.recon.render_mesh import render_mesh, rig_views, turntable
from drpose.recon.surface import project_colours, watertight
from drpose.recon.views import PSHUMAN_VIEW_WEIGHTS, ReconViews, prepare_views, unmirror

__all__ = [
    "PSHUMAN_VIEW_WEIGHTS",
    "CarveConfig",
    "CarveResult",
    "FitConfig",
    "FitResult",
    "LossWeights",
    "ReconConfig",
    "ReconResult",
    "ReconViews",
    "ViewTargets",
    "carve",
    "fit_smplx_to_views",
    "prepare_views",
    "project_colours",
    "reconstruct",
    "remesh",
    "render_mesh",
    "rig_views",
    "turntable",
    "unmirror",
    "watertight",
]
