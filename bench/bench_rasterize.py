"""Rasterizing the SMPL-X mesh (20,908 triangles, the stand-in body) into PSHuman's 6 views.

The C++ kernel against an independent way to produce the same images, trimesh + embree ray
casting (one BVH per pose, one orthographic ray per pixel centre and view, then barycentrics and
depth of the first hit: the full (u, v, z/w, id) image), at 512² and 768². The torch reference
is brute force over all triangles (O(pixels x triangles)) and is timed at 16² only (at 32² one
call took 75 s here). Then the full condition maps (normals, mask, depth, 23 heatmaps with
depth visibility) of 8 poses x 6 views at 768², with the 23 heatmaps at 768² or at the latent
size 96²: time per sample = median / 8.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh

from drpose.body import POSESCORE_JOINTS, StandInModelWarning, load_smplx, posed_body
from drpose.ops.rasterize import rasterize, rasterize_reference
from drpose.render import cameras
from drpose.render.conditions import ConditionConfig, render_conditions


def bodies(batch: int):
    """Stand-in SMPL-X bodies: the rest pose, then random poses (fixed seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        model = load_smplx(batch_size=batch)
    pose = torch.randn(batch, 63, generator=torch.Generator().manual_seed(0)) * 0.3
    pose[0] = 0
    with torch.no_grad():
        return posed_body(model, pose)


def rig_inputs():
    """Clip-space vertices (6, N, 4) of the rest-pose body in the rig, faces, world->clip."""
    out = bodies(1)
    matrices = cameras.world_to_clip(cameras.normalize_body(out.vertices))  # (1, 6, 4, 4)
    pos = cameras.transform_points(out.vertices, matrices)[0].contiguous()
    return pos, out.faces.to(torch.int32), out.vertices[0], matrices[0]


def ray_cast_rast(vertices: torch.Tensor, faces: np.ndarray, matrices: torch.Tensor,
                  size: tuple[int, int]) -> torch.Tensor:
    """The rasterizer's output (V, H, W, 4) by embree ray casting in world space."""
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    h, w = size
    mesh = trimesh.Trimesh(vertices.double().numpy(), faces, process=False)
    caster = RayMeshIntersector(mesh)  # BVH built once per pose, shared by the views
    py, px = np.meshgrid((2 * np.arange(h) + 1) / h - 1, (2 * np.arange(w) + 1) / w - 1,
                         indexing="ij")
    out = np.zeros((matrices.shape[0], h * w, 4), dtype=np.float32)
    for v, m in enumerate(matrices.double().numpy()):
        inv = np.linalg.inv(m)  # clip -> world (orthographic: w = 1)
        near = np.stack([px.ravel(), py.ravel(), -np.ones(h * w), np.ones(h * w)], -1) @ inv.T
        direction = inv[:3, 2] / np.linalg.norm(inv[:3, 2])
        tri_ids, rays, hits = caster.intersects_id(near[:, :3], np.broadcast_to(direction,
                                                   (h * w, 3)), multiple_hits=False,
                                                   return_locations=True)
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri_ids], hits)
        depth = np.c_[hits, np.ones(len(hits))] @ m[2]
        out[v, rays] = np.stack([bary[:, 0], bary[:, 1], depth, tri_ids + 1], -1)
    return torch.from_numpy(out).reshape(-1, h, w, 4)


@pytest.fixture(scope="module")
def rig():
    return rig_inputs()


@pytest.mark.parametrize("label", ["embree ray casting (trimesh)", "C++ kernel (cpu)"])
@pytest.mark.parametrize("size", [512, 768])
def bench_rasterize_6_views(measure, rig, size, label):
    pos, tri, vertices, matrices = rig
    res = (size, size)
    if label.startswith("embree"):
        faces = tri.long().numpy()
        measure(lambda: ray_cast_rast(vertices, faces, matrices, res),
                group=f"rasterize 20,908 tris x 6 views {size}x{size}", label=label,
                baseline=True, rounds=3, memory=False)  # numpy: not visible to torch
    else:
        measure(lambda: rasterize(pos, tri, res, backend="cpu"),
                group=f"rasterize 20,908 tris x 6 views {size}x{size}", label=label, rounds=5)


@pytest.mark.parametrize("label", ["torch reference (brute force)", "embree ray casting (trimesh)",
                                   "C++ kernel (cpu)"])
def bench_rasterize_small(measure, rig, label):
    pos, tri, vertices, matrices = rig
    res = (16, 16)
    group = "rasterize 20,908 tris x 6 views 16x16"
    if label.startswith("torch"):
        measure(lambda: rasterize_reference(pos, tri, res), group=group, label=label,
                baseline=True, rounds=1)
    elif label.startswith("embree"):
        faces = tri.long().numpy()
        measure(lambda: ray_cast_rast(vertices, faces, matrices, res), group=group, label=label,
                rounds=3, memory=False)
    else:
        measure(lambda: rasterize(pos, tri, res, backend="cpu"), group=group, label=label)


@pytest.mark.parametrize("heatmap_size", [768, 96])
def bench_condition_maps_8_poses(measure, heatmap_size):
    out = bodies(8)
    joints = out.joints[:, list(POSESCORE_JOINTS.indices)]
    config = ConditionConfig(size=(768, 768), heatmap_size=(heatmap_size, heatmap_size),
                             backend="cpu")
    with torch.no_grad():
        measure(lambda: render_conditions(out.vertices, out.faces, joints, config),
                group="condition maps 8 poses x 6 views 768x768 (time per sample = / 8)",
                label=f"render_conditions, heatmaps {heatmap_size}²", rounds=2)
