"""Render a box-unit mesh into the rig's views: synthetic generated views and turntables.

:func:`rig_views` produces what :class:`drpose.pipelines.MultiViewPipeline` outputs (encoded
normal maps in the front camera frame and colour images, white background, views 3 and 4 mirrored)
from a known mesh, so reconstruction can be tested against the mesh it should recover.
:func:`turntable` renders a coloured mesh, Lambert-shaded, from evenly spaced azimuths (the mesh is
turned in front of the rig's front camera).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drpose.ops import interpolate, rasterize
from drpose.recon.views import box_to_clip, unmirror
from drpose.render import cameras
from drpose.render.conditions import encode_normals, vertex_normals


@dataclass
class MeshImages:
    """normals (V, 3, H, W) unit box-frame normals, 0 on background; mask (V, 1, H, W);
    colours (V, 3, H, W) or None (0 on background). Top-down rows, physical cameras."""

    normals: Tensor
    mask: Tensor
    colours: Tensor | None


def render_mesh(vertices: Tensor, faces: Tensor, clip: Tensor, size: int,
                colours: Tensor | None = None) -> MeshImages:
    """Rasterize (N, 3) box-unit vertices, (F, 3) faces with (V, 4, 4) box -> clip matrices
    into V square images of side ``size``; ``colours``: (N, 3) per-vertex colours or None."""
    tri = faces.to(torch.int32).contiguous()
    top_down = cameras.rows_top_down(clip)
    pos = cameras.transform_points(vertices[None].float(), top_down[None])[0].contiguous()
    rast = rasterize(pos, tri, (size, size))
    covered = (rast[..., 3:] > 0).float()
    normals = vertex_normals(vertices[None].float(), faces.long())
    n = F.normalize(interpolate(normals, rast, tri), dim=-1) * covered
    c = None
    if colours is not None:
        c = (interpolate(colours[None].float(), rast, tri) * covered).permute(0, 3, 1, 2)
    return MeshImages(normals=n.permute(0, 3, 1, 2), mask=covered.permute(0, 3, 1, 2),
                      colours=c)


def rig_views(vertices: Tensor, faces: Tensor, colours: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The six body views of a box-unit mesh as the multi-view pipeline outputs them.

    Returns (normal_maps, colour_images), each (6, 3, H, W) in [0, 1] on white, views 3 and 4
    mirrored, normals encoded ``n * 0.5 + 0.5`` in the front camera (= box) frame.
    """
    images = render_mesh(vertices, faces, box_to_clip(), size, colours)
    normal_maps = encode_normals(images.normals, images.mask)
    colour_images = images.colours + (1 - images.mask)
    return unmirror(normal_maps), unmirror(colour_images)


def turntable(vertices: Tensor, faces: Tensor, colours: Tensor | None, size: int,
              azimuths: int = 8) -> Tensor:
    """(azimuths, 3, size, size) Lambert-shaded renders on white, the mesh turned by
    ``360 / azimuths`` degrees between frames (frame k sees it from azimuth ``k * 360/azimuths``).
    colours: (N, 3) in [0, 1] or None (grey)."""
    if colours is None:
        colours = torch.full((vertices.shape[0], 3), 0.7)
    light = F.normalize(torch.tensor([0.3, 0.5, 1.0]), dim=0)
    frames = []
    for k in range(azimuths):
        a = 2 * math.pi * k / azimuths
        c, s = math.cos(a), math.sin(a)
        # a camera at azimuth a = the mesh turned by -a about y in front of the front camera
        turn = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        turned = vertices.float() @ turn.T
        images = render_mesh(turned, faces, box_to_clip()[:1], size, colours)
        shade = 0.35 + 0.65 * (images.normals * light[:, None, None]).sum(1, keepdim=True).clamp(0)
        frames.append((images.colours * shade + (1 - images.mask))[0])
    return torch.stack(frames).clamp(0, 1)
