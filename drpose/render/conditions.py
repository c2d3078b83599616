"""Condition maps of posed bodies in PSHuman's views: normals, masks, depth, skeleton heatmaps.

All images are top-down (row 0 at the top), x to the right, in the rig's view order, and views
3 and 4 are mirrored as PSHuman's network generates them (``mirror=True``, see
:mod:`drpose.render.cameras`).

Normal convention (PSHuman, ``pshuman_views.json`` "normal_map_convention"): the normals of ALL
views are expressed in the front camera's frame (x right, y up, z towards the front camera), not
in each view's own camera frame; mirroring flips the image only, not the vectors. The rig's front
camera frame is the world frame (SMPL-X, the body faces +z; normalisation only translates and
scales), so the normal maps hold world-space unit normals. :func:`encode_normals` turns them into
PSHuman's colours, ``n * 0.5 + 0.5``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drpose.ops import interpolate, rasterize, render_heatmaps
from drpose.render import cameras


@dataclass(frozen=True)
class ConditionConfig:
    """What :func:`render_conditions` renders.

    size: (H, W) of normal, mask and depth maps. heatmap_size: (H, W) of the skeleton heatmaps
    (default: ``size``). sigma: heatmap Gaussian standard deviation, heatmap pixels.
    views: view indices or names (default: the 6 body views). normalization: ``"inference"`` or
    ``"training"`` (:func:`drpose.render.cameras.normalize_body`). visibility: ``"frame"`` or
    ``"depth"`` (:func:`drpose.render.cameras.project_joints`). mirror: render views 3 and 4
    mirrored as the network sees them. backend: rasterizer backend.
    """

    size: tuple[int, int] = (768, 768)
    heatmap_size: tuple[int, int] | None = None
    sigma: float = 2.0
    views: tuple[int | str, ...] | None = None
    normalization: str = "inference"
    visibility: cameras.Visibility = "depth"
    mirror: bool = True
    backend: str = "auto"


@dataclass(frozen=True)
class ConditionMaps:
    """Rendered maps for B bodies and V views (float32 unless noted).

    normals: (B, V, 3, H, W) unit normals in the front camera frame, 0 on background.
    mask: (B, V, 1, H, W) 1 where the body covers the pixel centre, else 0.
    depth: (B, V, 1, H, W) distance from the camera along its axis, metres; 0 on background.
    heatmaps: (B, V, J, Hh, Wh) Gaussian heatmaps of the visible joints (0 for hidden ones).
    keypoints: (B, V, J, 2) heatmap pixels (x right, y down); visible: (B, V, J) bool.
    """

    normals: Tensor
    mask: Tensor
    depth: Tensor
    heatmaps: Tensor
    keypoints: Tensor
    visible: Tensor


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (B, N, 3) of meshes (B, N, 3) with faces (F, 3).

    Faces are counter-clockwise seen from outside (the SMPL-X convention), so normals point out.
    """
    f = faces.long()
    v0, v1, v2 = vertices[:, f[:, 0]], vertices[:, f[:, 1]], vertices[:, f[:, 2]]
    face_normals = torch.linalg.cross(v1 - v0, v2 - v0)  # (B, F, 3), length = 2 x area
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, f[:, k], face_normals)
    return torch.nn.functional.normalize(normals, dim=-1)


def render_conditions(vertices: Tensor, faces: Tensor, joints: Tensor,
                      config: ConditionConfig = ConditionConfig()) -> ConditionMaps:
    """Render the condition maps of B posed bodies in the rig's views.

    Args:
        vertices: (B, N, 3) world metres (SMPL-X frame), e.g. ``posed_body(...).vertices``.
        faces: (F, 3) int vertex indices.
        joints: (B, J, 3) world metres, the joints to draw as heatmaps (e.g. the 23 PoseScore
            joints: ``posed_body(...).joints[:, POSESCORE_JOINTS.indices]``).
        config: see :class:`ConditionConfig`.

    Bodies are rendered one at a time (all views in one rasterizer call) to bound memory.
    """
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected (B, N, 3), got {tuple(vertices.shape)}")
    if joints.dim() != 3 or joints.shape[0] != vertices.shape[0] or joints.shape[-1] != 3:
        raise ValueError(f"joints: expected (B={vertices.shape[0]}, J, 3), got "
                         f"{tuple(joints.shape)}")
    views = cameras.resolve_views(config.views)
    heatmap_size = config.heatmap_size or config.size
    norm = cameras.normalize_body(vertices, mode=config.normalization)
    tri = faces.to(device=vertices.device, dtype=torch.int32).contiguous()
    keypoints, visible = cameras.project_joints(
        joints, views, heatmap_size, normalization=norm, visibility=config.visibility,
        mesh=(vertices, faces), mirror=config.mirror)
    heatmaps = render_heatmaps(keypoints.float(), visible, size=heatmap_size, sigma=config.sigma)
    matrices = cameras.rows_top_down(cameras.world_to_clip(norm, views, mirror=config.mirror))
    normals_world = vertex_normals(vertices, faces).float()
    b, v, (h, w) = vertices.shape[0], len(views), config.size
    normals = vertices.new_zeros(b, v, 3, h, w, dtype=torch.float32)
    mask = vertices.new_zeros(b, v, 1, h, w, dtype=torch.float32)
    depth = vertices.new_zeros(b, v, 1, h, w, dtype=torch.float32)
    for i in range(b):
        pos = cameras.transform_points(vertices[i:i + 1], matrices[i:i + 1])[0]  # (V, N, 4)
        rast = rasterize(pos.float().contiguous(), tri, config.size, backend=config.backend)
        covered = rast[..., 3] > 0
        n = interpolate(normals_world[i:i + 1], rast, tri)  # 0 on background
        normals[i] = torch.nn.functional.normalize(n, dim=-1).permute(0, 3, 1, 2)
        mask[i, :, 0] = covered
        distance = cameras.clip_depth_to_distance(rast[..., 2]) / norm.scale[i].float()
        depth[i, :, 0] = torch.where(covered, distance, 0.0)
    return ConditionMaps(normals=normals, mask=mask, depth=depth, heatmaps=heatmaps,
                         keypoints=keypoints, visible=visible)


def encode_normals(normals: Tensor, mask: Tensor, background: float = 1.0) -> Tensor:
    """PSHuman's normal colours: ``n * 0.5 + 0.5`` on the body, ``background`` elsewhere.

    normals (..., 3, H, W) and mask (..., 1, H, W) as in :class:`ConditionMaps`; returns
    (..., 3, H, W) in [0, 1].
    """
    return (normals * 0.5 + 0.5) * mask + background * (1 - mask)


def heatmaps_to_rgb(heatmaps: Tensor) -> Tensor:
    """(..., J, H, W) heatmaps in [0, 1] -> (..., 3, H, W): joint j in its own hue, max over j."""
    j = heatmaps.shape[-3]
    colours = torch.tensor([colorsys.hsv_to_rgb(i / max(j, 1), 0.9, 1.0) for i in range(j)],
                           dtype=heatmaps.dtype, device=heatmaps.device)  # (J, 3)
    weighted = heatmaps.unsqueeze(-4) * colours.T.reshape(3, j, 1, 1)  # (..., 3, J, H, W)
    return weighted.amax(dim=-3)


def save_view_grid(images: Tensor, path: str | Path, *, gap: int = 4,
                   background: float = 1.0) -> Path:
    """Write views as one PNG grid (rows = bodies, columns = views) for a person to look at.

    images: (V, C, H, W) or (B, V, C, H, W) with C = 1 (grey) or 3 (RGB), values in [0, 1]
    (clipped). gap: pixels between tiles, filled with ``background``. Returns the path.
    """
    if images.dim() == 4:
        images = images[None]
    if images.dim() != 5 or images.shape[2] not in (1, 3):
        raise ValueError(f"images: expected (V, C, H, W) or (B, V, C, H, W) with C in (1, 3), "
                         f"got {tuple(images.shape)}")
    b, v, _, h, w = images.shape
    tiles = images.detach().float().clamp(0, 1).expand(b, v, 3, h, w).cpu()
    grid = torch.full((3, b * h + (b - 1) * gap, v * w + (v - 1) * gap), background)
    for i in range(b):
        for j in range(v):
            top, left = i * (h + gap), j * (w + gap)
            grid[:, top:top + h, left:left + w] = tiles[i, j]
    pixels = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
