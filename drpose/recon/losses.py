"""Differentiable image losses of a mesh against the six views: normals, silhouettes, smoothness.

Rendering goes through :func:`drpose.ops.rasterize` / :func:`drpose.ops.interpolate`, which (as
nvdiffrast without ``antialias``) give gradients through barycentrics only: a rendered mask has no
gradient at silhouette edges. The mask loss therefore does not compare rendered masks; it is a
distance-based silhouette loss on the projected vertices, differentiable w.r.t. their positions:

* ``outside``: every vertex of a closed surface projects inside its own silhouette, so a vertex
  projecting onto target background is wrong by its distance to the target foreground. The
  target's background distance transform (scipy's exact EDT, NDC units) is sampled bilinearly at
  each projected vertex; the loss is the mean squared distance. It shrinks the mesh into the mask.
* ``coverage``: a target foreground pixel that the rendered mesh leaves uncovered (a plain,
  gradient-free rasterization says which) pulls its nearest projected vertex (a k-d tree on the
  detached positions picks it) by the squared distance, summed over uncovered pixels and divided
  by the target's foreground pixel count. It grows the mesh out to the mask: a one-sided Chamfer
  from the uncovered target to the mesh's projection.

Normals: vertex normals (a differentiable function of the positions) are interpolated over the
pixels covered both by the rendered mesh and the target mask, and compared by L1 with the target
normals (box frame), PSHuman's normal loss. To save time only the union of those pixels is
interpolated (``interpolate`` treats pixels independently, so the covered pixels are passed as a
1-row image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from drpose.ops import interpolate, rasterize
from drpose.recon.views import ReconViews, box_to_clip
from drpose.render import cameras
from drpose.render.conditions import vertex_normals


@dataclass
class ViewTargets:
    """Precomputed per-view targets (physical cameras, top-down rows, V = 6).

    background_distance: (V, 1, H, W) distance (NDC units) from each pixel centre to the nearest
    target foreground pixel centre, 0 on the foreground. foreground: (V, H, W) bool.
    normals: (V, 3, H, W). weights: (V,). clip: (V, 4, 4) box -> clip. pixel_ndc: (H, W, 2) NDC
    (x right, y up) of each pixel centre of a top-down image.
    """

    background_distance: Tensor
    foreground: Tensor
    normals: Tensor
    weights: Tensor
    clip: Tensor
    pixel_ndc: Tensor

    @classmethod
    def from_views(cls, views: ReconViews) -> ViewTargets:
        h, w = views.size
        foreground = views.masks[:, 0] > 0.5
        distance = np.stack([
            ndimage.distance_transform_edt(~fg) if fg.any() else np.full(fg.shape, float(h))
            for fg in foreground.cpu().numpy()])
        ys = 1.0 - (2.0 * torch.arange(h, dtype=torch.float32) + 1.0) / h
        xs = (2.0 * torch.arange(w, dtype=torch.float32) + 1.0) / w - 1.0
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return cls(
            background_distance=torch.from_numpy(distance).float()[:, None] * (2.0 / h),
            foreground=foreground,
            normals=views.normals.float(),
            weights=views.weights.float(),
            clip=box_to_clip(),
            pixel_ndc=torch.stack([grid_x, grid_y], dim=-1),
        )


@dataclass
class RenderedViews:
    """A mesh seen by the six cameras. ndc: (V, N, 2) projected vertices (x right, y up),
    differentiable; rast: (V, H, W, 4) top-down rasterizer output."""

    ndc: Tensor
    rast: Tensor

    @property
    def covered(self) -> Tensor:
        """(V, H, W) bool."""
        return self.rast[..., 3] > 0


def render(vertices: Tensor, tri: Tensor, targets: ViewTargets) -> RenderedViews:
    """Project and rasterize (N, 3) box-unit vertices with (F, 3) int32 faces into the views."""
    clip = cameras.transform_points(vertices[None], targets.clip[None])[0]  # (V, N, 4)
    top_down = cameras.transform_points(vertices[None],
                                        cameras.rows_top_down(targets.clip)[None])[0]
    rast = rasterize(top_down.contiguous(), tri, targets.foreground.shape[-2:])
    return RenderedViews(ndc=clip[..., :2] / clip[..., 3:], rast=rast)


def outside_loss(rendered: RenderedViews, targets: ViewTargets) -> Tensor:
    """(V,) mean squared distance (NDC) of projected vertices from the target foreground."""
    grid = torch.stack([rendered.ndc[..., 0], -rendered.ndc[..., 1]], dim=-1)[:, None]  # y down
    sampled = F.grid_sample(targets.background_distance, grid, mode="bilinear",
                            padding_mode="border", align_corners=False)  # (V, 1, 1, N)
    return sampled.square().mean(dim=(1, 2, 3))


def coverage_loss(rendered: RenderedViews, targets: ViewTargets) -> Tensor:
    """(V,) squared distance from each uncovered target pixel to its nearest projected vertex,
    summed and divided by the view's foreground pixel count."""
    uncovered = targets.foreground & ~rendered.covered
    losses = []
    for v in range(uncovered.shape[0]):
        pixels = targets.pixel_ndc[uncovered[v]]  # (M, 2)
        if pixels.shape[0] == 0:
            losses.append(rendered.ndc.new_zeros(()))
            continue
        points = rendered.ndc[v]
        _, nearest = cKDTree(points.detach().cpu().numpy()).query(pixels.numpy())
        d2 = (points[torch.from_numpy(nearest)] - pixels).square().sum(-1)
        losses.append(d2.sum() / targets.foreground[v].sum().clamp(min=1))
    return torch.stack(losses)


def normal_loss(rendered: RenderedViews, vertices: Tensor, tri: Tensor,
                targets: ViewTargets) -> Tensor:
    """(V,) mean L1 (summed over xyz) between rendered and target normals over the pixels that
    both the mesh and the target mask cover (0 for a view with no such pixel)."""
    both = rendered.covered & targets.foreground  # (V, H, W)
    v = both.shape[0]
    flat = both.reshape(v, -1)
    pixels = flat.any(dim=0).nonzero()[:, 0]  # union of the views' pixels
    if pixels.numel() == 0:
        return vertices.new_zeros(v)
    rast = rendered.rast.reshape(v, -1, 4)[:, pixels][:, None]  # (V, 1, P, 4)
    normals = vertex_normals(vertices[None], tri.long())  # (1, N, 3)
    pred = F.normalize(interpolate(normals, rast.contiguous(), tri)[:, 0], dim=-1)  # (V, P, 3)
    target = targets.normals.reshape(v, 3, -1)[:, :, pixels].transpose(1, 2)
    weight = flat[:, pixels].float()
    l1 = (pred - target).abs().sum(-1) * weight
    return l1.sum(-1) / weight.sum(-1).clamp(min=1)


def edges_of(faces: Tensor) -> Tensor:
    """(E, 2) unique undirected edges of (F, 3) triangles."""
    f = faces.long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0)


def laplacian_loss(vertices: Tensor, edges: Tensor) -> Tensor:
    """Mean squared uniform Laplacian ``|v - mean(neighbours)|^2`` (box units^2)."""
    n = vertices.shape[0]
    i, j = edges[:, 0], edges[:, 1]
    total = torch.zeros_like(vertices).index_add(0, i, vertices[j]).index_add(0, j, vertices[i])
    degree = torch.zeros(n, dtype=vertices.dtype).index_add(
        0, torch.cat([i, j]), torch.ones(2 * edges.shape[0], dtype=vertices.dtype))
    lap = vertices - total / degree.clamp(min=1)[:, None]
    return lap.square().sum(-1).mean()


@dataclass(frozen=True)
class LossWeights:
    """Weights of the image losses (per view they are further weighted by the view weights)."""

    normal: float = 1.0
    outside: float = 100.0
    coverage: float = 100.0


def view_losses(vertices: Tensor, tri: Tensor, targets: ViewTargets,
                weights: LossWeights) -> tuple[Tensor, dict[str, float]]:
    """The view-weighted image loss of a mesh and its parts (for logging)."""
    rendered = render(vertices, tri, targets)
    parts = {
        "normal": normal_loss(rendered, vertices, tri, targets),
        "outside": outside_loss(rendered, targets),
        "coverage": coverage_loss(rendered, targets),
    }
    w = targets.weights / targets.weights.sum().clamp(min=1e-8)
    total = sum(getattr(weights, name) * (w * value).sum() for name, value in parts.items())
    return total, {name: float((w * value.detach()).sum()) for name, value in parts.items()}
