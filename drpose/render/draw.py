"""Skeletons drawn with PIL, one module for both kinds of drawing.

- :func:`draw_skeletons`: any joint tree (joint -> parent) over views, so a person can see at a
  glance whether a pose was followed (training and evaluation grids).
- :func:`skeleton_images` / :func:`draw_skeleton`: OpenPose-style drawings of COCO-17 keypoints,
  the conditions of a pose ControlNet and dataset overlays.

Pose ControlNets are trained on OpenPose's 18-keypoint body drawings: coloured limbs on black,
one hue per limb (20 degree steps round the colour wheel, limbs at 60 % intensity) and a dot per
keypoint. The 18 keypoints are COCO-17 plus a neck (the midpoint of the shoulders) in OpenPose's
order: nose, neck, right shoulder / elbow / wrist, left shoulder / elbow / wrist, right hip /
knee / ankle, left hip / knee / ankle, right eye, left eye, right ear, left ear.

Keypoints are pixels in the image convention of :mod:`drpose.render.cameras` (pixel centres at
integers, x right, y down).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

# OpenPose-18 keypoint k is COCO-17 keypoint COCO_OF_OPENPOSE[k]; -1 marks the neck.
COCO_OF_OPENPOSE: tuple[int, ...] = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
NECK = 1
# Limbs as (from, to) OpenPose-18 indices, in OpenPose's drawing order.
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
LIMB_INTENSITY = 0.6


def _hue_colour(index: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * 20 % 360) / 360, 1.0, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


KEYPOINT_COLOURS: tuple[tuple[int, int, int], ...] = tuple(_hue_colour(k) for k in range(18))


def openpose_keypoints(keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 keypoints (17, 2) and visibility (17,) -> OpenPose-18 (18, 2), (18,) bool; the
    neck is the shoulders' midpoint, visible when both shoulders are."""
    coco = np.asarray(keypoints, dtype=np.float64).reshape(17, 2)
    seen = np.asarray(visible, dtype=bool).reshape(17)
    order = np.array(COCO_OF_OPENPOSE)
    points = coco[np.maximum(order, 0)].copy()
    shown = seen[np.maximum(order, 0)].copy()
    points[NECK] = (coco[5] + coco[6]) / 2
    shown[NECK] = seen[5] and seen[6]
    return points, shown


def draw_skeleton(canvas: Image.Image, keypoints: np.ndarray, visible: np.ndarray, *,
                  width: int | None = None) -> Image.Image:
    """Draw one COCO-17 skeleton (keypoints (17, 2) pixels, visible (17,) bool) onto an RGB PIL
    image in place, OpenPose-style; ``width`` is the limb width in pixels (default: 1/64 of the
    image side, at least 1). Returns the canvas."""
    points, shown = openpose_keypoints(keypoints, visible)
    width = width or max(1, round(min(canvas.size) / 64))
    limb_colours = [tuple(round(c * LIMB_INTENSITY) for c in KEYPOINT_COLOURS[limb])
                    for limb in range(len(OPENPOSE_LIMBS))]
    _draw_bones(canvas, points.tolist(), shown.tolist(), OPENPOSE_LIMBS, limb_colours,
                KEYPOINT_COLOURS, width=width, radius=max(1.0, width * 0.75))
    return canvas


def _draw_bones(canvas: Image.Image, points: Sequence[Sequence[float]], shown: Sequence[bool],
                bones: Sequence[tuple[int, int]], bone_colours: Sequence[tuple[int, ...]],
                joint_colours: Sequence[tuple[int, ...]], *, width: int, radius: float) -> None:
    """Draw onto ``canvas`` in place: each bone (a, b) whose two ends are shown as a line of
    ``width`` pixels, then each shown joint as a dot of ``radius`` pixels; points (J, 2) pixels."""
    draw = ImageDraw.Draw(canvas)
    for (a, b), colour in zip(bones, bone_colours, strict=True):
        if shown[a] and shown[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=width)
    for k, (x, y) in enumerate(points):
        if shown[k]:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=joint_colours[k])


def _as_tensor(canvas: Image.Image) -> Tensor:
    """An RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)


def skeleton_images(keypoints: Tensor, visible: Tensor, size: int) -> Tensor:
    """OpenPose-style drawings on black: keypoints (T, 17, 2) pixels, visible (T, 17) bool ->
    (T, 3, size, size) float32 in [0, 1] (the condition images of a pose ControlNet)."""
    frames = []
    for points, shown in zip(keypoints.detach().cpu().numpy(), visible.cpu().numpy(),
                             strict=True):
        frames.append(_as_tensor(draw_skeleton(Image.new("RGB", (size, size)), points, shown)))
    if not frames:
        return torch.zeros(0, 3, size, size)
    return torch.stack(frames)


def draw_skeletons(images: Tensor, keypoints: Tensor, visible: Tensor,
                   parents: Sequence[int], *, width: int = 1) -> Tensor:
    """Draw bones (joint -> parent) and joints over images.

    Args:
        images: (N, 3, H, W) float in [0, 1].
        keypoints: (N, J, 2) pixels of these images (x right, y down, pixel centres at integers;
            the convention of :func:`drpose.render.cameras.project_joints`).
        visible: (N, J) bool; bones are drawn between visible joints only.
        parents: J parent indices (-1 for a root), e.g. ``SMPLX_PARENTS[:J]``.
        width: line width in pixels.

    Returns:
        (N, 3, H, W) float in [0, 1], a new tensor. Bone colours follow the joint index (hue).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
    count = keypoints.shape[1]
    if keypoints.shape != (images.shape[0], count, 2) or visible.shape != keypoints.shape[:2]:
        raise ValueError(f"keypoints (N, J, 2) and visible (N, J) must match images: got "
                         f"{tuple(keypoints.shape)} and {tuple(visible.shape)}")
    if len(parents) < count:
        raise ValueError(f"parents: need {count} entries, got {len(parents)}")
    colours = [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(j / count, 0.9, 1.0))
               for j in range(count)]
    pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5)
    bones = [(parents[j], j) for j in range(count) if parents[j] >= 0]
    bone_colours = [colours[j] for j in range(count) if parents[j] >= 0]
    out = []
    for image, points, seen in zip(pixels.astype(np.uint8), keypoints.detach().cpu().tolist(),
                                   visible.cpu().tolist(), strict=True):
        canvas = Image.fromarray(image)
        _draw_bones(canvas, points, seen, bones, bone_colours, colours, width=width, radius=width)
        out.append(_as_tensor(canvas))
    return torch.stack(out) if out else images.new_zeros(images.shape)
