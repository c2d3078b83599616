"""Reconstruction time per subject on this machine at the CPU defaults (drpose.recon.ReconConfig:
256^2 views, 100 fitting + 100 carving steps, Poisson depth 8).

The subject: the stand-in SMPL-X body in an asymmetric pose, pushed out 1.5 cm ("clothing"),
rendered into the six views as the multi-view pipeline outputs them (the known-mesh setting of
tests/test_recon.py). Stages are timed separately (each on the previous stage's output), plus one
carving step (losses, backward, Adam) for the per-iteration cost.

Memory: the stages spend much of their time in scipy / pymeshlab, which the shared tensor-memory
counter cannot see, so only the single carving step reports a peak (its tensors are all torch).

Measured on the quiet machine (AMD EPYC, 2 cores, torch 2.13 CPU, OpenMP default waits): fit
9.5 s, carve 9.0 s (one step 80 ms), Poisson + colours 1.5 s: about 20 s per subject.
Measured (same machine, other jobs running, OMP_WAIT_POLICY=PASSIVE): fit
12.4 s, carve 12.1 s (one step 104 ms, 29 MB peak, ~13K triangles), Poisson + colours 1.4 s: about
26 s per subject. With the default (spinning) OpenMP wait policy on the same busy machine the
same run took 97 s + 154 s (one step 2.2 s): two-thread OpenMP regions spin against other
processes' threads; run benchmarks with OMP_WAIT_POLICY=PASSIVE or on an idle machine.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from drpose.body import load_smplx, posed_body
from drpose.recon import (
    ReconConfig,
    ViewTargets,
    carve,
    fit_smplx_to_views,
    prepare_views,
    project_colours,
    rig_views,
    watertight,
)
from drpose.recon.losses import edges_of, laplacian_loss, view_losses
from drpose.render import cameras
from drpose.render.conditions import vertex_normals

CONFIG = ReconConfig()
GROUP = (f"recon per subject, CPU defaults ({CONFIG.resolution}^2, fit {CONFIG.fit.iterations}"
         f" + carve {CONFIG.carve.iterations} steps)")


@pytest.fixture(scope="module")
def subject():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_smplx()
    pose = torch.zeros(1, 63)
    pose[0, 15 * 3 + 2], pose[0, 16 * 3 + 2], pose[0, 0], pose[0, 9] = -0.9, 0.6, -0.6, 0.8
    out = posed_body(model, pose, torch.tensor([[0.0, 0.3, 0.0]]))
    norm = cameras.normalize_body(out.vertices)
    vertices = norm.apply(out.vertices)[0]
    normals = vertex_normals(vertices[None], out.faces)[0]
    vertices = vertices + normals * 0.015 * norm.scale[0]
    colours = torch.where(normals[:, 2:3] > 0, torch.tensor([0.9, 0.2, 0.2]),
                          torch.tensor([0.2, 0.2, 0.9]))
    normal_maps, colour_images = rig_views(vertices, out.faces, colours, CONFIG.resolution)
    views = prepare_views(normal_maps, colour_images)
    targets = ViewTargets.from_views(views)
    fit = fit_smplx_to_views(model, targets, CONFIG.fit)
    carved = carve(fit.vertices, fit.faces, targets, CONFIG.carve)
    return model, views, targets, fit, carved


def bench_fit(measure, subject):
    model, _, targets, _, _ = subject
    measure(lambda: fit_smplx_to_views(model, targets, CONFIG.fit), group=GROUP,
            label="fit SMPL-X", rounds=1, memory=False)


def bench_carve(measure, subject):
    _, _, targets, fit, _ = subject
    measure(lambda: carve(fit.vertices, fit.faces, targets, CONFIG.carve), group=GROUP,
            label="carve (remeshing incl.)", rounds=1, memory=False)


def bench_watertight_and_colours(measure, subject):
    _, views, _, _, carved = subject

    def finish() -> None:
        mesh = watertight(carved.vertices.numpy(), carved.faces.numpy(), CONFIG.poisson_depth)
        project_colours(np.asarray(mesh.vertices), np.asarray(mesh.faces), views)

    measure(finish, group=GROUP, label="Poisson + colours", rounds=3, memory=False)


def bench_carving_step(measure, subject):
    _, _, targets, _, carved = subject
    positions = carved.vertices.clone().requires_grad_(True)
    tri = carved.faces.to(torch.int32).contiguous()
    edges = edges_of(tri)
    optimizer = torch.optim.Adam([positions], lr=CONFIG.carve.lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = view_losses(positions, tri, targets, CONFIG.carve.losses)
        (loss + CONFIG.carve.laplacian * laplacian_loss(positions, edges)).backward()
        optimizer.step()

    measure(step, group=f"one carving step, {CONFIG.resolution}^2 x 6 views, "
            f"{len(carved.faces)} triangles", label="losses + backward + Adam", rounds=5)
