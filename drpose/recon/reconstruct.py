"""Generated views -> textured watertight mesh: PSHuman's explicit carving, end to end.

Stages: :func:`drpose.recon.views.prepare_views` (un-mirror, decode, masks) ->
:func:`drpose.recon.fit.fit_smplx_to_views` -> :func:`drpose.recon.carve.carve` ->
:func:`drpose.recon.surface.watertight` -> :func:`drpose.recon.surface.project_colours`.
The mesh is in box units (the rig's normalised coordinates); :meth:`ReconResult.metres` maps it
to the fitted SMPL-X's metres.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import smplx
import trimesh

from drpose.recon.carve import CarveConfig, CarveResult, carve
from drpose.recon.fit import FitConfig, FitResult, fit_smplx_to_views
from drpose.recon.losses import ViewTargets
from drpose.recon.surface import project_colours, watertight
from drpose.recon.views import ReconViews


@dataclass(frozen=True)
class ReconConfig:
    """Reconstruction options.

    resolution: side of the square views the losses compare (views are resampled to it; PSHuman
    renders at 1024). fit, carve: stage options. poisson_depth: screened Poisson octree depth.

    The defaults are the CPU budget (256^2, 100 fitting + 100 carving steps; see
    ``bench/bench_recon.py`` for the time per subject); :meth:`pshuman` gives PSHuman's (1024^2,
    700 carving steps), meant for a GPU with nvdiffrast.
    """

    resolution: int = 256
    fit: FitConfig = field(default_factory=FitConfig)
    carve: CarveConfig = field(default_factory=CarveConfig)
    poisson_depth: int = 8

    @classmethod
    def pshuman(cls) -> ReconConfig:
        return cls(resolution=1024, fit=FitConfig(iterations=300),
                   carve=CarveConfig(iterations=700, edge_length=0.006, remesh_every=50),
                   poisson_depth=9)


@dataclass
class ReconResult:
    """mesh: watertight, vertex-coloured (when the views have colours), box units. fit, carved:
    the intermediate stages. seconds: wall time per stage."""

    mesh: trimesh.Trimesh
    fit: FitResult
    carved: CarveResult
    seconds: dict[str, float]

    def metres(self) -> trimesh.Trimesh:
        """The mesh in the fitted SMPL-X's frame and units (metres, y up, facing +z)."""
        mesh = self.mesh.copy()
        mesh.vertices = ((mesh.vertices - self.fit.translation.numpy()) / self.fit.scale
                         + self.fit.rest_centre.numpy())
        return mesh


def reconstruct(views: ReconViews, model: smplx.SMPLX, config: ReconConfig = ReconConfig(), *,
                progress: bool = False) -> ReconResult:
    """Reconstruct a textured watertight mesh from prepared views.

    Args:
        views: from :func:`drpose.recon.views.prepare_views`.
        model: SMPL-X model (:func:`drpose.body.load_smplx`, float32, CPU).
        config: see :class:`ReconConfig`.
        progress: tqdm bars per stage.
    """
    if not (views.weights > 0).any():
        raise ValueError("reconstruct: no usable view (every mask is empty, covers most of the "
                         "image, or disagrees with the front view's rows); pass masks")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    views = views.resized(config.resolution)
    targets = ViewTargets.from_views(views)
    fit = fit_smplx_to_views(model, targets, config.fit, progress=progress)
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    carved = carve(fit.vertices, fit.faces, targets, config.carve, progress=progress)
    seconds["carve"] = time.perf_counter() - start
    start = time.perf_counter()
    mesh = watertight(carved.vertices.numpy(), carved.faces.numpy(), config.poisson_depth)
    seconds["poisson"] = time.perf_counter() - start
    if views.colours is not None:
        start = time.perf_counter()
        colours = project_colours(np.asarray(mesh.vertices), np.asarray(mesh.faces), views)
        rgba = np.concatenate([colours, np.ones((len(colours), 1), np.float32)], axis=1)
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(rgba * 255).round()
                                                  .astype(np.uint8))
        seconds["colours"] = time.perf_counter() - start
    return ReconResult(mesh=mesh, fit=fit, carved=carved, seconds=seconds)

