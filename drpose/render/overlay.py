"""Skeletons drawn over views, so a person can see at a glance whether a pose was followed."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


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
    out = []
    for image, points, seen in zip(pixels.astype(np.uint8), keypoints.detach().cpu().tolist(),
                                   visible.cpu().tolist(), strict=True):
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for j in range(count):
            parent = parents[j]
            if parent >= 0 and seen[j] and seen[parent]:
                draw.line([tuple(points[parent]), tuple(points[j])], fill=colours[j], width=width)
        for j in range(count):
            if seen[j]:
                x, y = points[j]
                draw.ellipse([x - width, y - width, x + width, y + width], fill=colours[j])
        out.append(torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255)
    return torch.stack(out) if out else images.new_zeros(images.shape)
