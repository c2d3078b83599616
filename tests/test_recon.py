"""drpose.recon against a known mesh: the stand-in SMPL-X body, posed and "clothed" (pushed out
along its normals), rendered into the six views exactly as the multi-view pipeline outputs them
(encoded front-frame normals, white background, back and left views mirrored), then reconstructed.
Distances are in cm of the posed body (box units / normalisation scale).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh

from drpose.body import load_smplx, posed_body
from drpose.eval.metrics import surface_metrics
from drpose.recon import (
    CarveConfig,
    FitConfig,
    ReconConfig,
    ViewTargets,
    fit_smplx_to_views,
    prepare_views,
    reconstruct,
    remesh,
    render_mesh,
    rig_views,
    unmirror,
)
from drpose.recon.losses import coverage_loss, normal_loss, outside_loss, render
from drpose.recon.views import box_to_clip
from drpose.render import cameras
from drpose.render.conditions import vertex_normals

SIZE = 64
RED, BLUE = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])
CLOTHING_M = 0.015  # the known mesh is the body pushed out by 1.5 cm


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_smplx()


@pytest.fixture(scope="module")
def known(model):
    """(vertices box units, faces, box units per metre, normal maps, colour images): an
    asymmetric pose (arms lowered unevenly, one leg bent, body turned 17 degrees), front-facing
    skin red and back-facing blue."""
    pose = torch.zeros(1, 63)
    pose[0, 15 * 3 + 2] = -0.9  # left shoulder down
    pose[0, 16 * 3 + 2] = 0.6  # right shoulder, less
    pose[0, 0] = -0.6  # left hip flexed
    pose[0, 9] = 0.8  # left knee bent
    out = posed_body(model, pose, torch.tensor([[0.0, 0.3, 0.0]]))
    norm = cameras.normalize_body(out.vertices)
    scale = float(norm.scale[0])
    vertices = norm.apply(out.vertices)[0]
    normals = vertex_normals(vertices[None], out.faces)[0]
    vertices = vertices + normals * CLOTHING_M * scale
    colours = torch.where(normals[:, 2:3] > 0, RED, BLUE)
    normal_maps, colour_images = rig_views(vertices, out.faces, colours, SIZE)
    return vertices, out.faces, scale, normal_maps, colour_images


def chamfer_cm(mesh: trimesh.Trimesh, known) -> float:
    vertices, faces, scale = known[:3]
    gt = trimesh.Trimesh(vertices.numpy(), faces.numpy(), process=False)
    return surface_metrics(mesh, gt, n_points=20_000)["chamfer_cm"] / scale


@pytest.fixture(scope="module")
def result(known, model):
    views = prepare_views(known[3], known[4])
    config = ReconConfig(resolution=SIZE, fit=FitConfig(iterations=60),
                         carve=CarveConfig(iterations=60, remesh_every=20), poisson_depth=7)
    return reconstruct(views, model, config)


def test_known_mesh_is_recovered(result, known, model):
    targets = ViewTargets.from_views(prepare_views(known[3], known[4]))
    start = fit_smplx_to_views(model, targets, FitConfig(iterations=0))  # rest pose over the mask
    start_cm = chamfer_cm(trimesh.Trimesh(start.vertices.numpy(), start.faces.numpy()), known)
    fit_cm = chamfer_cm(trimesh.Trimesh(result.fit.vertices.numpy(), result.fit.faces.numpy()),
                        known)
    height = float(known[0][:, 1].max() - known[0][:, 1].min())
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=height / 2)
    sphere_cm = chamfer_cm(sphere, known)
    final_cm = chamfer_cm(result.mesh, known)
    print(f"chamfer cm: sphere {sphere_cm:.2f} rest {start_cm:.2f} fit {fit_cm:.2f} "
          f"final {final_cm:.2f}")
    # one pixel of these 64^2 views is 1/64 box unit = 2.8 cm of the body
    # measured here: sphere 41.5, rest 9.2, fit 1.02, final 0.46
    assert final_cm < 0.8
    assert final_cm < 0.1 * start_cm and final_cm < 0.02 * sphere_cm
    assert final_cm < 0.7 * fit_cm  # carving improves on the fitted SMPL-X


def test_output_is_watertight(result):
    mesh = result.mesh
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.volume > 0


def test_colours_land_on_the_right_side(result):
    colours = result.mesh.visual.vertex_colors[:, :3] / 255.0
    facing = np.asarray(result.mesh.vertex_normals)[:, 2]
    front, back = colours[facing > 0.8].mean(0), colours[facing < -0.8].mean(0)
    assert front[0] > 0.7 and front[2] < 0.3, front
    assert back[2] > 0.7 and back[0] < 0.3, back


def test_mirrored_views_are_undone(known):
    """The known mesh matches its views when views 3 and 4 are un-mirrored, and measurably not
    when they are taken as they come (mirrored the wrong way); the other views are unaffected."""
    vertices, faces = known[0], known[1]
    tri = faces.to(torch.int32).contiguous()

    def per_view(views):
        targets = ViewTargets.from_views(views)
        rendered = render(vertices, tri, targets)
        return (normal_loss(rendered, vertices, tri, targets), outside_loss(rendered, targets),
                coverage_loss(rendered, targets))

    right = per_view(prepare_views(known[3], known[4]))
    wrong = per_view(prepare_views(known[3], known[4], mirrored=False))
    for good, bad in zip(right, wrong, strict=True):
        torch.testing.assert_close(good[[0, 1, 2, 5]], bad[[0, 1, 2, 5]])
    normal_good, normal_bad = right[0][[3, 4]], wrong[0][[3, 4]]
    assert (normal_good < 0.15).all() and (normal_bad > 3 * normal_good).all()
    assert (wrong[1][[3, 4]] > 10 * right[1][[3, 4]]).all()
    assert (wrong[2][[3, 4]] > 10 * right[2][[3, 4]]).all()


def test_prepare_views_decodes_normals_and_masks(known):
    vertices, faces = known[0], known[1]
    views = prepare_views(known[3], known[4])
    physical = render_mesh(vertices, faces, box_to_clip(), SIZE)
    torch.testing.assert_close(views.masks, physical.mask)
    # 8-bit-free round trip: decoding the encoded normals gives the rendered ones
    torch.testing.assert_close(views.normals, physical.normals, atol=1e-5, rtol=0)
    torch.testing.assert_close(unmirror(unmirror(known[3])), known[3])
    assert torch.equal(views.weights, torch.tensor([1.0, 0.4, 0.8, 1.0, 0.8, 0.4]))


def test_inconsistent_views_get_no_weight(known):
    normal_maps = known[3].clone()
    normal_maps[2] = torch.rand_like(normal_maps[2])  # noise: a "mask" over the whole image
    normal_maps[1, :, : SIZE // 4] = 1.0  # a view missing the head: rows disagree
    normal_maps[4] = 1.0  # nothing there
    views = prepare_views(normal_maps, known[4])
    assert torch.equal(views.weights, torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.4]))


def test_remesh_keeps_edges_in_band():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)  # edges ~0.09
    target = 0.03
    vertices, faces = remesh(sphere.vertices, sphere.faces, target)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    lengths = mesh.edges_unique_length
    assert abs(np.median(lengths) / target - 1) < 0.15
    assert np.mean((lengths > 0.6 * target) & (lengths < 1.4 * target)) > 0.95
    assert mesh.is_watertight


def test_silhouette_losses_pull_towards_the_mask():
    """Gradient directions of the distance-based mask terms: a sphere right of a target disc
    moves left (outside term); a sphere smaller than the target grows (coverage term)."""
    target = trimesh.creation.icosphere(subdivisions=3, radius=0.25)
    t_vertices = torch.tensor(target.vertices, dtype=torch.float32)
    t_faces = torch.tensor(target.faces)
    images = render_mesh(t_vertices, t_faces, box_to_clip(), 48)
    views = prepare_views(unmirror(images.normals * 0.5 + 0.5) * unmirror(images.mask)
                          + 1 - unmirror(images.mask))
    targets = ViewTargets.from_views(views)
    tri = t_faces.to(torch.int32).contiguous()

    shifted = (t_vertices * 0.5 + torch.tensor([0.35, 0.0, 0.0])).requires_grad_(True)
    outside_loss(render(shifted, tri, targets), targets)[0].backward()
    assert shifted.grad[:, 0].sum() > 0  # descent moves it towards -x, into the disc

    small = (t_vertices * 0.5).requires_grad_(True)
    rendered = render(small, tri, targets)
    assert outside_loss(rendered, targets).abs().max() == 0
    coverage_loss(rendered, targets).sum().backward()
    radial = (small.grad * small.detach()).sum(-1)
    assert radial.sum() < 0  # descent moves vertices outwards


def test_no_usable_view_is_an_error(model):
    views = prepare_views(torch.ones(6, 3, SIZE, SIZE))  # white: no person anywhere
    assert not (views.weights > 0).any()
    with pytest.raises(ValueError, match="no usable view"):
        reconstruct(views, model)
