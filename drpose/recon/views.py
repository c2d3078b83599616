"""Generated views -> what reconstruction fits: un-mirrored, decoded, in the view box's cameras.

PSHuman's conventions (``shared/reference/pshuman_views.json``; :mod:`drpose.render.cameras`):

* the network outputs the back (3) and left (4) views flipped left-right (the image only, not the
  normal vectors); PSHuman flips them back before reconstruction (``inference.py:L151-153``), and
  so does :func:`prepare_views`: every view here is what the PHYSICAL camera sees
  (``cameras.clip_from_camera(mirror=False)``);
* normal maps hold ``n * 0.5 + 0.5`` with ``n`` in the FRONT camera's frame (x right, y up, z
  towards the front camera) for every view. The rig's front camera frame is the view box frame
  (normalisation only translates and scales), so decoded normals are box-frame normals of every
  view and are compared with rendered box-frame normals directly: no per-view rotation is needed
  (a per-view camera-frame convention would need each view's rotation applied first).

Reconstruction works in the normalised body coordinates of the rig ("box units": the view box is
``[-ORTHO_SCALE/2, ORTHO_SCALE/2]^2``; PSHuman's inference scale puts a standing adult's height at
about 0.96 box units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from drpose.render import cameras

# PSHuman's per-view loss weights, rig order (front, front_right, right, back, left, front_left);
# reconstruct.py:L75.
PSHUMAN_VIEW_WEIGHTS: tuple[float, ...] = (1.0, 0.4, 0.8, 1.0, 0.8, 0.4)
# A pixel of a normal map is foreground when its colour is farther than this from the white
# background; a unit normal's colour n/2 + 1/2 is at least (sqrt(3) - 1)/2 = 0.37 from white.
NORMAL_BACKGROUND_DISTANCE = 0.15
# A usable view's mask covers at least MIN and at most MAX of the image: a person framed as
# PSHuman does covers roughly 10-30% (wide poses more), never most of the square.
MIN_MASK_COVERAGE = 0.002
MAX_MASK_COVERAGE = 0.6
# At elevation 0 every orthographic view spans the same rows as the front one; a view whose mask's
# top or bottom row is off by more than this fraction of the image height is not of that body.
ROW_EXTENT_TOLERANCE = 0.05


@dataclass
class ReconViews:
    """The six body views as reconstruction uses them (physical cameras, top-down rows).

    normals: (6, 3, H, W) unit normals in the box (= front camera) frame, 0 on background.
    masks: (6, 1, H, W) float {0, 1}.
    colours: (6, 3, H, W) in [0, 1] or None.
    weights: (6,) per-view loss weights (PSHuman's, 0 for views dropped as unusable).
    """

    normals: Tensor
    masks: Tensor
    colours: Tensor | None
    weights: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.normals.shape[-2]), int(self.normals.shape[-1])

    def resized(self, size: int) -> ReconViews:
        """Views resampled to ``size x size`` (normals bilinear and renormalised, masks by a 0.5
        threshold of the bilinear resample, colours bilinear)."""
        if self.size == (size, size):
            return self

        def resample(x: Tensor) -> Tensor:
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=size < self.size[0])

        masks = (resample(self.masks) > 0.5).float()
        normals = F.normalize(resample(self.normals), dim=1) * masks
        colours = None if self.colours is None else resample(self.colours).clamp(0, 1)
        return ReconViews(normals=normals, masks=masks, colours=colours, weights=self.weights)


def unmirror(views: Tensor) -> Tensor:
    """(..., 6, C, H, W) images in the network's convention -> physical cameras: views 3 and 4
    flipped left-right (image only). The operation is its own inverse."""
    out = views.clone()
    for v in cameras.MIRRORED_VIEWS:
        out[..., v, :, :, :] = views[..., v, :, :, :].flip(-1)
    return out


def masks_from_normal_maps(normal_maps: Tensor) -> Tensor:
    """(V, 3, H, W) encoded normal maps on a white background -> (V, 1, H, W) float masks."""
    distance = (1.0 - normal_maps).norm(dim=1, keepdim=True)
    return (distance > NORMAL_BACKGROUND_DISTANCE).float()


def prepare_views(
    normal_maps: Tensor,
    colours: Tensor | None = None,
    masks: Tensor | None = None,
    *,
    mirrored: bool = True,
    view_weights: tuple[float, ...] = PSHUMAN_VIEW_WEIGHTS,
) -> ReconViews:
    """Decode generated views for reconstruction.

    Args:
        normal_maps: (6, 3, H, W) or (7, ...) (a face view, last, is ignored) in [0, 1]: PSHuman's
            encoded normals ``n * 0.5 + 0.5`` (front camera frame) on a white background.
        colours: same shape, [0, 1], or None.
        masks: (6, 1, H, W) foreground masks in the same (network) convention, or None: then the
            pixels of ``normal_maps`` farther than :data:`NORMAL_BACKGROUND_DISTANCE` from white.
        mirrored: the inputs follow the network's convention (views 3 and 4 mirrored); False when
            they already come from physical cameras.
        view_weights: per-view loss weights. A view gets weight 0 when its mask covers less than
            :data:`MIN_MASK_COVERAGE` or more than :data:`MAX_MASK_COVERAGE` of the image (not a
            person's silhouette), or when its rows disagree with
            the front view's (:func:`consistent_with_front`).
    """
    body = len(cameras.BODY_VIEWS)
    if normal_maps.dim() != 4 or normal_maps.shape[0] < body or normal_maps.shape[1] != 3:
        raise ValueError(f"normal_maps: expected (6 or 7, 3, H, W), got {tuple(normal_maps.shape)}")
    normal_maps = normal_maps[:body].float()
    if colours is not None:
        if colours.shape[1:] != normal_maps.shape[1:] or colours.shape[0] < body:
            raise ValueError(f"colours: expected the shape of normal_maps, got "
                             f"{tuple(colours.shape)}")
        colours = colours[:body].float()
    if masks is None:
        masks = masks_from_normal_maps(normal_maps)
    elif masks.shape != (body, 1, *normal_maps.shape[-2:]):
        raise ValueError(f"masks: expected ({body}, 1, H, W), got {tuple(masks.shape)}")
    masks = (masks[:body].float() > 0.5).float()
    if mirrored:
        normal_maps, masks = unmirror(normal_maps), unmirror(masks)
        colours = None if colours is None else unmirror(colours)
    normals = F.normalize(normal_maps * 2 - 1, dim=1) * masks
    coverage = masks.mean(dim=(1, 2, 3))
    usable = (coverage >= MIN_MASK_COVERAGE) & (coverage <= MAX_MASK_COVERAGE)
    if usable[0]:
        usable &= consistent_with_front(masks)
    weights = torch.tensor(view_weights, dtype=torch.float32) * usable.float()
    return ReconViews(normals=normals, masks=masks, colours=colours, weights=weights)


def consistent_with_front(masks: Tensor, tolerance: float = ROW_EXTENT_TOLERANCE) -> Tensor:
    """(V,) bool: the mask's top and bottom rows are within ``tolerance * H`` of view 0's (at
    elevation 0 all orthographic views of one body span the same rows). masks: (V, 1, H, W)."""
    h = masks.shape[-2]
    rows = masks[:, 0].amax(dim=-1) > 0.5  # (V, H)
    index = torch.arange(h, dtype=torch.float32)
    top = torch.where(rows, index, float(h)).amin(dim=-1)
    bottom = torch.where(rows, index, -1.0).amax(dim=-1)
    off = torch.maximum((top - top[0]).abs(), (bottom - bottom[0]).abs())
    return off <= tolerance * h


def box_to_clip(dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(6, 4, 4) box coordinates -> clip space of the six PHYSICAL (unmirrored) body views."""
    cam = cameras.camera_from_normalized(None, dtype=dtype, device=device)
    clip = cameras.clip_from_camera(None, mirror=False, dtype=dtype, device=device)
    return clip @ cam


def view_directions(dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(6, 3) unit vectors from the box origin towards each camera (box frame)."""
    return cameras.camera_from_normalized(None, dtype=dtype, device=device)[:, 2, :3]
