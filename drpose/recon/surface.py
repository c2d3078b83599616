"""The carved surface made watertight, and coloured from the views (PSHuman's last two stages).

Watertight: screened Poisson reconstruction (Kazhdan & Hoppe 2013) through pymeshlab, MeshLab's
maintained implementation (open3d has one too; pymeshlab already does the carving's remeshing, so
one library serves both), from the carved mesh's vertices and vertex normals (the remeshed mesh
samples its surface evenly); the largest connected component is kept (trimesh).

Colours: every vertex takes a weighted mean of the colour views it is visible in. Visibility is a
depth test through :func:`drpose.ops.rasterize` (the vertex is no farther than the nearest surface
at its pixel plus two pixels' depth) inside the view's mask; the weight is the view's loss weight
times ``max(0, n . d)^2`` (n the vertex normal, d the direction to the camera): grazing views
smear colours, frontal ones do not. Vertices no view sees take the colour of the nearest seen
vertex.
"""

from __future__ import annotations

import numpy as np
import pymeshlab
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree

from drpose.ops import rasterize
from drpose.recon.views import ReconViews, box_to_clip, view_directions
from drpose.render import cameras

UNSEEN_GREY = 0.6


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component with the most faces."""
    parts = mesh.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else mesh


def watertight(vertices: np.ndarray, faces: np.ndarray, depth: int = 8) -> trimesh.Trimesh:
    """Screened Poisson surface of a mesh's oriented vertices, largest component.

    vertices (N, 3) float, faces (F, 3) int (consistently oriented, normals out). depth: octree
    depth (resolution ``2^depth`` across the bounding cube; PSHuman's library default is 8).
    """
    source = trimesh.Trimesh(vertices, faces, process=False)
    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=np.asarray(vertices, dtype=np.float64),
                                   v_normals_matrix=np.asarray(source.vertex_normals,
                                                               dtype=np.float64)))
    # one thread: MeshLab's OpenMP Poisson with 2 threads ran 10x slower than with 1 on a busy
    # 2-core machine (88 s vs 7 s at depth 8), and gains little on an idle one
    meshes.generate_surface_reconstruction_screened_poisson(depth=depth, preclean=True, threads=1)
    mesh = meshes.current_mesh()
    result = trimesh.Trimesh(mesh.vertex_matrix(), mesh.face_matrix(), process=True)
    return largest_component(result)


def project_colours(vertices: np.ndarray, faces: np.ndarray, views: ReconViews) -> np.ndarray:
    """(N, 3) float colours in [0, 1] for a mesh in box units from the views' colour images."""
    if views.colours is None:
        raise ValueError("project_colours: the views carry no colour images")
    verts = torch.as_tensor(vertices, dtype=torch.float32)
    tri = torch.as_tensor(faces, dtype=torch.int32).contiguous()
    normals = torch.tensor(trimesh.Trimesh(vertices, faces, process=False).vertex_normals,
                           dtype=torch.float32)
    h, w = views.size
    clip = cameras.transform_points(verts[None], box_to_clip()[None])[0]  # (V, N, 4)
    top_down = cameras.transform_points(verts[None], cameras.rows_top_down(box_to_clip())[None])
    rast = rasterize(top_down[0].contiguous(), tri, (h, w))
    grid = torch.stack([clip[..., 0], -clip[..., 1]], dim=-1)[:, None]  # (V, 1, N, 2), y down

    def sample(images: torch.Tensor, mode: str) -> torch.Tensor:  # (V, C, H, W) -> (V, N, C)
        out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
        return out[:, :, 0].transpose(1, 2)

    surface = sample(rast[..., 2:4].permute(0, 3, 1, 2), "nearest")  # (V, N, 2): z/w, id
    in_mask = sample(views.masks, "nearest")[..., 0] > 0.5
    tolerance = 2 * cameras.ORTHO_SCALE / h  # two pixels; the rig's clip z/w is in box units
    visible = in_mask & (surface[..., 1] > 0) & (clip[..., 2] <= surface[..., 0] + tolerance)
    facing = (normals @ view_directions().T).T.clamp(min=0)  # (V, N)
    weight = facing.square() * visible * views.weights[:, None]
    colour = (weight[..., None] * sample(views.colours, "bilinear")).sum(0)
    total = weight.sum(0)
    seen = total > 1e-6
    out = np.full((len(vertices), 3), UNSEEN_GREY, dtype=np.float32)
    out[seen.numpy()] = (colour[seen] / total[seen, None]).numpy()
    if seen.any() and not seen.all():
        _, nearest = cKDTree(vertices[seen.numpy()]).query(vertices[~seen.numpy()])
        out[~seen.numpy()] = out[seen.numpy()][nearest]
    return out
