"""OpenPose-style skeleton drawings of COCO-17 keypoints: pose-ControlNet conditions and overlays.

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
    side = min(canvas.size)
    width = width or max(1, round(side / 64))
    draw = ImageDraw.Draw(canvas)
    for limb, (a, b) in enumerate(OPENPOSE_LIMBS):
        if shown[a] and shown[b]:
            colour = tuple(round(c * LIMB_INTENSITY) for c in KEYPOINT_COLOURS[limb])
            draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=width)
    radius = max(1.0, width * 0.75)
    for k in range(len(points)):
        if shown[k]:
            x, y = points[k]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius],
                         fill=KEYPOINT_COLOURS[k])
    return canvas


def skeleton_images(keypoints: Tensor, visible: Tensor, size: int) -> Tensor:
    """OpenPose-style drawings on black: keypoints (T, 17, 2) pixels, visible (T, 17) bool ->
    (T, 3, size, size) float32 in [0, 1] (the condition images of a pose ControlNet)."""
    frames = []
    for points, shown in zip(keypoints.detach().cpu().numpy(), visible.cpu().numpy(),
                             strict=True):
        canvas = draw_skeleton(Image.new("RGB", (size, size)), points, shown)
        frames.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    if not frames:
        return torch.zeros(0, 3, size, size)
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()
