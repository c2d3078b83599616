"""Metric evaluation time (drpose.eval.metrics) on a human-sized mesh pair.

The pair: a unit icosphere subdivided 5 times (20,480 triangles) stretched to a 1.8 m tall
body-sized blob, and the same mesh with smooth bumps of up to ~5 cm (the prediction), so the
distances are not trivial. surface_metrics samples 100K points on each surface (the protocol's
default) and queries both directions: open3d's RaycastingScene against trimesh's proximity
query (the baseline: the plain library call). normal_error renders 4 views at 512 x 512 with the
CPU rasterizer. ICP alignment is timed on its own.

Memory: these metrics run in numpy / open3d / embree, which the shared tensor-memory counter
cannot see, so no peak is reported for them (n/a rather than a wrong 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from drpose.eval import metrics
from drpose.eval.metrics import align_mesh, normal_error, surface_metrics

N_POINTS = 100_000
DISTANCE_BACKENDS = {  # label: (backend, is the baseline, rounds)
    "trimesh proximity": ("trimesh", True, 3),
    "open3d RaycastingScene": ("open3d", False, 5),
}


def mesh_pair() -> tuple[trimesh.Trimesh, trimesh.Trimesh]:
    gt = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    gt.vertices = gt.vertices * np.array([0.8, 1.8, 0.5])
    bumps = 0.05 * np.sin(9 * gt.vertices[:, :1]) * np.cos(7 * gt.vertices[:, 1:2])
    pred = trimesh.Trimesh(gt.vertices + bumps * gt.vertex_normals, gt.faces, process=False)
    return pred, gt


@pytest.mark.parametrize("label", list(DISTANCE_BACKENDS))
def bench_surface_metrics(measure, label):
    backend, baseline, rounds = DISTANCE_BACKENDS[label]
    if backend == "open3d" and isinstance(metrics._open3d(), ImportError):
        pytest.skip(f"open3d does not import: {metrics._open3d()}")
    pred, gt = mesh_pair()
    measure(lambda: surface_metrics(pred, gt, n_points=N_POINTS, backend=backend),
            group=f"surface_metrics {N_POINTS // 1000}K points, {len(gt.faces)} triangles",
            label=label, baseline=baseline, rounds=rounds, memory=False)


def bench_surface_sampling(measure):
    """The yardstick inside surface_metrics: drawing the 2 x 100K samples alone."""
    pred, gt = mesh_pair()

    def sample() -> None:
        rng = np.random.default_rng(0)
        trimesh.sample.sample_surface(gt, N_POINTS, seed=rng)
        trimesh.sample.sample_surface(pred, N_POINTS, seed=rng)

    measure(sample, group=f"surface_metrics {N_POINTS // 1000}K points, {len(gt.faces)} "
            "triangles", label="sampling only (yardstick)", memory=False)


def bench_normal_error(measure):
    pred, gt = mesh_pair()
    measure(lambda: normal_error(pred, gt, views=4, size=512),
            group=f"normal_error 4 views 512x512, {len(gt.faces)} triangles",
            label="rasterize (auto backend)", rounds=3)


def bench_icp_alignment(measure):
    pred, gt = mesh_pair()
    moved = pred.copy().apply_transform(trimesh.transformations.rotation_matrix(0.2, [0, 1, 0]))
    measure(lambda: align_mesh(moved, gt, "icp"),
            group=f"align_mesh icp, {metrics.ICP_SAMPLES} samples per surface",
            label="point-to-plane similarity ICP", rounds=3, memory=False)
