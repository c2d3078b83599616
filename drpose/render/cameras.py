"""PSHuman's view rig: the one place where the project projects anything.

World frame: SMPL-X (metres, y up, the body faces +z). Every camera is orthographic, at elevation
0, looking at the origin of the *normalised* body (see :func:`normalize_body`).

Views, in the order the PSHuman network generates them (``shared/reference/pshuman_views.json``):

====  ============  =======  ==========================================================
idx   name          azimuth  notes
====  ============  =======  ==========================================================
0     front         0        camera on +z, image right = world +x (the subject's left)
1     front_right   45
2     right         90       camera on +x: shows the subject's LEFT side (PSHuman's name)
3     back          180      generated mirrored left-right by PSHuman (see below)
4     left          270      generated mirrored left-right by PSHuman (see below)
5     front_left    315
6     face          --       front camera zoomed x3 on the top-centre ninth of the image
====  ============  =======  ==========================================================

Azimuth ``a`` puts the camera at ``distance * (sin a, 0, cos a)``; its OpenGL frame has
right = (cos a, 0, -sin a), up = +y, back = (sin a, 0, cos a). This is exactly PSHuman's
``w2c_opengl_yup`` matrices (``reconstruct.py``), and its Blender Z-up rig maps onto ours by
Blender (X, Y, Z) -> ours (z, x, y).

Mirroring. PSHuman trains the network to output the back (3) and left (4) views flipped
left-right (image only; normal vectors are not changed) and flips them back after inference.
Our rig renders what the network sees by default (``mirror=True``): keypoints, heatmaps and
condition maps of views 3 and 4 are mirrored, so they can be compared with generated views
directly. Pass ``mirror=False`` for the physical (unmirrored) cameras.

Normalisation (:func:`normalize_body`): the body is translated so the centre of its axis-aligned
bounding box is at the origin and uniformly scaled; the view box is
``[-ORTHO_SCALE/2, ORTHO_SCALE/2]^2`` in normalised units (PSHuman renders with ortho_scale 1).
Two scales, both PSHuman's:

* ``"inference"`` (default): the front view's silhouette box has its longer side equal to
  ``crop_fraction`` (740/768) of the image, as PSHuman's input preprocessing crops and resizes the
  input image; generated views share the input's scale, so this is the scale of DrPose rollouts.
* ``"training"``: bounding-box diagonal = 1, as PSHuman's Blender training renders.

Pixel convention (heatmaps, keypoints, images returned by :mod:`drpose.render.conditions`):
pixel ``i`` covers ``[i - 0.5, i + 0.5]`` (centres at integers), x to the right, y DOWN, row 0 at
the top. The rasterizer (:func:`drpose.ops.rasterize`) uses OpenGL bottom-up rows; images are
rasterized with :func:`rows_top_down` matrices, whose negated y makes its rows top-down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from drpose.ops import rasterize

VIEW_NAMES: tuple[str, ...] = (
    "front", "front_right", "right", "back", "left", "front_left", "face")
BODY_VIEWS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
AZIMUTHS_DEG: tuple[float, ...] = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0, 0.0)
MIRRORED_VIEWS: frozenset[int] = frozenset({3, 4})
FACE_VIEW = 6

ORTHO_SCALE = 1.0  # side of the square view box in normalised units (PSHuman: ortho_scale 1)
CAMERA_DISTANCE = 1.5  # PSHuman's camera distance in normalised units
NEAR, FAR = 0.5, 2.5  # PSHuman's clip planes, distances from the camera
INFERENCE_CROP_FRACTION = 740 / 768  # PSHuman's crop_size / image size
FACE_CROP = (1 / 3, 0.0, 2 / 3, 1 / 3)  # (x0, y0, x1, y1) fractions of the front image, y down
FACE_ZOOM = 3.0

Views = Sequence[int | str] | None
Visibility = Literal["frame", "depth"]


def resolve_views(views: Views) -> list[int]:
    """View indices for ``views``: ``None`` = the 6 body views; items are indices or names."""
    if views is None:
        return list(BODY_VIEWS)
    out = []
    for v in views:
        if isinstance(v, str):
            if v not in VIEW_NAMES:
                raise ValueError(f"views: unknown view name {v!r}; expected one of {VIEW_NAMES}")
            out.append(VIEW_NAMES.index(v))
        elif isinstance(v, int) and 0 <= v < len(VIEW_NAMES):
            out.append(v)
        else:
            raise ValueError(f"views: expected view indices in [0, 7) or names, got {v!r}")
    return out


@dataclass(frozen=True)
class BodyNormalization:
    """World -> normalised body coordinates: ``p_norm = (p_world - center) * scale``.

    center: (B, 3) world metres; scale: (B,) normalised units per metre.
    """

    center: torch.Tensor
    scale: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) world points -> (B, N, 3) normalised points."""
        return (points - self.center[:, None]) * self.scale[:, None, None]

    def to(self, device: torch.device | str) -> BodyNormalization:
        """This normalisation with its tensors on ``device``."""
        return BodyNormalization(self.center.to(device), self.scale.to(device))

    def matrix(self) -> torch.Tensor:
        """(B, 4, 4) homogeneous matrix of :meth:`apply`."""
        b = self.center.shape[0]
        m = torch.zeros(b, 4, 4, dtype=self.center.dtype, device=self.center.device)
        m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = self.scale
        m[:, :3, 3] = -self.center * self.scale[:, None]
        m[:, 3, 3] = 1.0
        return m


def normalize_body(
    vertices: torch.Tensor,
    mode: Literal["inference", "training"] = "inference",
    crop_fraction: float = INFERENCE_CROP_FRACTION,
) -> BodyNormalization:
    """How PSHuman places a body in its view box (see the module docstring).

    vertices: (B, N, 3) world metres (SMPL-X frame). The centre is the centre of the axis-aligned
    bounding box (PSHuman's training renders; in the front view it is also the centre of the
    silhouette box that PSHuman's inference crop centres). The scale is, for ``"inference"``,
    ``crop_fraction * ORTHO_SCALE / max(box width x, box height y)`` (the front-view silhouette's
    longer side fills ``crop_fraction`` of the image) and, for ``"training"``,
    ``1 / |box diagonal|``. ``"inference"`` looks at the front view only (as PSHuman's crop
    does): a body much deeper along z than it is wide or tall (lying towards the camera) can then
    overflow the side views and the near/far planes, where it is clipped.
    """
    if vertices.dim() != 3 or vertices.shape[-1] != 3 or vertices.shape[1] == 0:
        raise ValueError(f"vertices: expected shape (B, N>0, 3), got {tuple(vertices.shape)}")
    lo = vertices.amin(dim=1)
    hi = vertices.amax(dim=1)
    center = (lo + hi) / 2
    if mode == "inference":
        scale = crop_fraction * ORTHO_SCALE / (hi - lo)[:, :2].amax(dim=1)
    elif mode == "training":
        scale = 1.0 / (hi - lo).norm(dim=1)
    else:
        raise ValueError(f"mode: expected 'inference' or 'training', got {mode!r}")
    return BodyNormalization(center=center, scale=scale)


def camera_from_normalized(views: Views = None, *, dtype=torch.float32,
                           device=None) -> torch.Tensor:
    """(V, 4, 4) normalised body coordinates -> OpenGL camera frame (x right, y up, looking -z).

    The camera of azimuth ``a`` sits at ``CAMERA_DISTANCE * (sin a, 0, cos a)``.
    """
    mats = []
    for v in resolve_views(views):
        a = math.radians(AZIMUTHS_DEG[v])
        right = (math.cos(a), 0.0, -math.sin(a))
        back = (math.sin(a), 0.0, math.cos(a))
        mats.append([[*right, 0.0], [0.0, 1.0, 0.0, 0.0], [*back, -CAMERA_DISTANCE],
                     [0.0, 0.0, 0.0, 1.0]])
    return torch.tensor(mats, dtype=dtype, device=device).reshape(-1, 4, 4)


def clip_from_camera(views: Views = None, *, mirror: bool = True, dtype=torch.float32,
                     device=None) -> torch.Tensor:
    """(V, 4, 4) camera frame -> OpenGL clip space (orthographic, w = 1).

    x, y: the view box ``[-ORTHO_SCALE/2, ORTHO_SCALE/2]`` maps to ``[-1, 1]``; the face view zooms
    x3 on the top-centre ninth of the front image (PSHuman's crop); mirrored views negate x when
    ``mirror``. z: distance from the camera in ``[NEAR, FAR]`` maps to ``[-1, 1]`` (nearer is
    smaller, as nvdiffrast's depth test expects).
    """
    mats = []
    for v in resolve_views(views):
        sx = sy = 2.0 / ORTHO_SCALE
        ox = oy = 0.0
        if v == FACE_VIEW:
            x0, y0, x1, y1 = FACE_CROP
            # crop centre in NDC (y up) and the zoom that maps the crop onto [-1, 1]
            cx, cy = (x0 + x1) - 1.0, 1.0 - (y0 + y1)
            sx, sy = sx * FACE_ZOOM, sy * FACE_ZOOM
            ox, oy = -cx * FACE_ZOOM, -cy * FACE_ZOOM
        if mirror and v in MIRRORED_VIEWS:
            sx, ox = -sx, -ox
        sz = -2.0 / (FAR - NEAR)
        oz = -(FAR + NEAR) / (FAR - NEAR)
        mats.append([[sx, 0.0, 0.0, ox], [0.0, sy, 0.0, oy], [0.0, 0.0, sz, oz],
                     [0.0, 0.0, 0.0, 1.0]])
    return torch.tensor(mats, dtype=dtype, device=device).reshape(-1, 4, 4)


def world_to_clip(normalization: BodyNormalization, views: Views = None, *,
                  mirror: bool = True) -> torch.Tensor:
    """(B, V, 4, 4) world (metres) -> normalised body -> camera -> clip, per body and view."""
    like = normalization.center
    cam = camera_from_normalized(views, dtype=like.dtype, device=like.device)
    clip = clip_from_camera(views, mirror=mirror, dtype=like.dtype, device=like.device)
    return (clip @ cam)[None] @ normalization.matrix()[:, None]


def transform_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Homogeneous transform of (B, N, 3) points by (B, V, 4, 4) matrices -> (B, V, N, 4)."""
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    return torch.einsum("bvij,bnj->bvni", matrices, homo)


def ndc_to_pixels(ndc_xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., 2) NDC (x right, y up, [-1, 1]) -> (..., 2) pixel coordinates of the heatmap
    convention (centres at integers, y down): ``x = (x_ndc + 1) W / 2 - 0.5``,
    ``y = (1 - y_ndc) H / 2 - 0.5``."""
    h, w = size
    x = (ndc_xy[..., 0] + 1.0) * (w / 2) - 0.5
    y = (1.0 - ndc_xy[..., 1]) * (h / 2) - 0.5
    return torch.stack([x, y], dim=-1)


def rows_top_down(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) world -> clip matrices with clip y negated, for the rasterizer.

    The rasterizer writes OpenGL bottom-up rows; with y negated, its row r is the image row r
    counted from the top (pixel centres are symmetric), so images come out top-down, y down,
    without a flip. Only for rasterizing: keypoints use the unflipped matrices.
    """
    flip = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=matrices.dtype, device=matrices.device)
    return flip[:, None] * matrices


def face_crop_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """PSHuman's face crop of the front image as a pixel box (x0, y0, x1, y1), y down.

    For 768 x 768 this is (256, 0, 512, 256), the crop PSHuman upsamples to the face view.
    """
    h, w = size
    x0, y0, x1, y1 = FACE_CROP
    return round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)


def project_joints(
    joints: torch.Tensor,
    views: Views = None,
    size: tuple[int, int] = (768, 768),
    *,
    normalization: BodyNormalization | None = None,
    visibility: Visibility = "frame",
    mesh: tuple[torch.Tensor, torch.Tensor] | None = None,
    mirror: bool = True,
    depth_tolerance: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project 3D joints into the rig's views, in the heatmap convention.

    joints: (B, J, 3) world metres. views: see :func:`resolve_views`. size: (H, W) of the target
    heatmaps. normalization: how the bodies sit in the view box; default
    ``normalize_body(mesh vertices)`` (so ``mesh`` is then required: joints alone do not say
    where the body's silhouette is). mesh: ``(vertices (B, N, 3) world metres, faces (F, 3)
    int)``, needed for ``visibility="depth"``.

    Returns keypoints (B, V, J, 2) float in pixels (x right, y down, pixel centres at integers)
    and visible (B, V, J) bool: inside the frame (``-0.5 <= x < W - 0.5``, same for y), and for
    ``visibility="depth"`` also not hidden by the body: joints lie inside the body, so a joint is
    hidden when the nearest surface at its pixel is more than ``depth_tolerance`` metres in front
    of it: a limb or the torso in between, not the joint's own flesh. A heuristic: 0.2 m is more
    than a joint's depth under its own surface (torso joints: up to ~0.17 m) and less than a
    far-side joint's depth behind the torso or a crossing limb (~0.25 m and more); a hand resting
    on the belly can fall either way. Differentiable w.r.t. ``joints``.
    """
    if joints.dim() != 3 or joints.shape[-1] != 3:
        raise ValueError(f"joints: expected shape (B, J, 3), got {tuple(joints.shape)}")
    if visibility not in ("frame", "depth"):
        raise ValueError(f"visibility: expected 'frame' or 'depth', got {visibility!r}")
    if mesh is not None:
        vertices = mesh[0]
        if vertices.dim() != 3 or vertices.shape[0] != joints.shape[0] or vertices.shape[-1] != 3:
            raise ValueError(f"mesh: vertices must be (B={joints.shape[0]}, N, 3), got "
                             f"{tuple(vertices.shape)}")
    if normalization is None:
        if mesh is None:
            raise ValueError("project_joints needs normalization= or mesh= (the body vertices "
                             "say where the body sits in the view box)")
        normalization = normalize_body(mesh[0])
    if visibility == "depth" and mesh is None:
        raise ValueError("visibility='depth' needs mesh=(vertices, faces)")
    h, w = size
    matrices = world_to_clip(normalization, views, mirror=mirror)  # (B, V, 4, 4)
    clip = transform_points(joints, matrices)  # (B, V, J, 4)
    keypoints = ndc_to_pixels(clip[..., :2] / clip[..., 3:], size)
    visible = ((keypoints[..., 0] >= -0.5) & (keypoints[..., 0] < w - 0.5)
               & (keypoints[..., 1] >= -0.5) & (keypoints[..., 1] < h - 0.5))
    if visibility == "depth":
        visible = visible & ~_hidden_by_body(clip, keypoints.detach(), matrices, mesh, size,
                                             depth_tolerance * normalization.scale)
    return keypoints, visible


def clip_depth_to_distance(z_over_w: torch.Tensor) -> torch.Tensor:
    """Rasterizer depth (clip z/w in [-1, 1]) -> distance from the camera, normalised units."""
    return (z_over_w * (FAR - NEAR) + (FAR + NEAR)) / 2


def _hidden_by_body(joint_clip: torch.Tensor, keypoints: torch.Tensor, matrices: torch.Tensor,
                    mesh: tuple[torch.Tensor, torch.Tensor], size: tuple[int, int],
                    tolerance: torch.Tensor) -> torch.Tensor:
    """(B, V, J) bool: the body's nearest surface at the joint's pixel is in front of the joint
    by more than ``tolerance`` (B,) normalised units."""
    vertices, faces = mesh
    b, v = joint_clip.shape[:2]
    h, w = size
    pos = transform_points(vertices.detach(), rows_top_down(matrices.detach()))
    rast = rasterize(pos.reshape(b * v, -1, 4).float().contiguous(),
                     faces.to(torch.int32).contiguous(), (h, w))
    depth = rast[..., 2:4].reshape(b, v, h * w, 2)
    col = keypoints[..., 0].round().long().clamp(0, w - 1)
    row = keypoints[..., 1].round().long().clamp(0, h - 1)
    at = depth.gather(2, (row * w + col)[..., None].expand(-1, -1, -1, 2))  # (B, V, J, 2)
    covered = at[..., 1] > 0
    surface = clip_depth_to_distance(at[..., 0].to(joint_clip.dtype))
    joint = clip_depth_to_distance(joint_clip[..., 2].detach() / joint_clip[..., 3].detach())
    return covered & (surface < joint - tolerance[:, None, None])
