"""Judges the reward never sees: generated multi-view images against a pose's true renders, and
the paired statistics of :mod:`drpose.eval.experiment`.

Images are ``(V, 3, R, R)`` float in [0, 1] per object (the pipeline's decoded views, the
renders of :mod:`drpose.data.multiview`), masks ``(V, R, R)`` bool.

* :func:`foreground_mask`: a generated normal view's silhouette. Normal colours are
  ``n * 0.5 + 0.5`` on a white background; for a unit normal ``||rgb - 1|| = ||n - 1|| / 2 >=
  sqrt(4 - 2 sqrt 3) / 2 = 0.366``, so a pixel is foreground when its distance to white exceeds
  ``BACKGROUND_DISTANCE`` = 0.15 (a blurred edge counts when it is about halfway there).
* :func:`silhouette_iou`: per view ``|A & B| / |A | B|`` (1 when both masks are empty).
* :func:`normal_angular_error`: per view, the mean over the pixels of the union of the two masks
  of the angle (degrees) between the two decoded normals ``normalize(2 rgb - 1)``. Where one
  image shows background its white decodes to ``(1, 1, 1) / sqrt 3``, so a silhouette error
  costs the angle between that direction and the other normal (the same rule for both images).
* :func:`view_scores` gathers them (and colour PSNR / SSIM) for one object;
  :func:`judge_rollout` decodes a generated object and adds PoseScores.
* :func:`sign_test`: the exact two-sided binomial sign test of paired differences (ties
  dropped): ``p = min(1, 2 * P[X <= min(n+, n-)])``, ``X ~ Binomial(n+ + n-, 1/2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from drpose.render.image_metrics import image_metrics
from drpose.reward import PoseScore, latents_from_rows

if TYPE_CHECKING:
    from drpose.pipelines.multiview import MultiViewPipeline

BACKGROUND_DISTANCE = 0.15  # foreground: Euclidean RGB distance to white above this


def _check_views(name: str, images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be (V, 3, R, R) images in [0, 1], got "
                         f"{tuple(images.shape)}")


def foreground_mask(normals: Tensor, threshold: float = BACKGROUND_DISTANCE) -> Tensor:
    """``(V, R, R)`` bool silhouettes of normal views ``(V, 3, R, R)`` on white (module
    docstring)."""
    _check_views("normals", normals)
    return (normals.float() - 1).norm(dim=1) > threshold


def silhouette_iou(pred: Tensor, true: Tensor) -> Tensor:
    """``(V,)`` intersection over union of masks ``(V, R, R)`` (bool); 1 where both are empty."""
    if pred.shape != true.shape or pred.dim() != 3:
        raise ValueError(f"masks must both be (V, R, R), got {tuple(pred.shape)} and "
                         f"{tuple(true.shape)}")
    pred, true = pred.bool(), true.bool()
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def decode_normals(images: Tensor) -> Tensor:
    """Unit normals ``(V, 3, R, R)`` of normal colours ``(V, 3, R, R)``: ``normalize(2 x - 1)``."""
    return torch.nn.functional.normalize(images.float() * 2 - 1, dim=1, eps=1e-6)


def normal_angular_error(pred: Tensor, true: Tensor, pred_mask: Tensor, true_mask: Tensor
                         ) -> Tensor:
    """``(V,)`` mean angle in degrees between decoded normals inside the union of the masks
    (module docstring); NaN for a view where both masks are empty."""
    _check_views("pred", pred)
    _check_views("true", true)
    cosine = (decode_normals(pred) * decode_normals(true)).sum(1).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cosine))  # (V, R, R)
    union = (pred_mask.bool() | true_mask.bool()).float()
    count = union.flatten(1).sum(1)
    total = (angle * union).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(count, math.nan))


@dataclass
class SignTest:
    """Paired comparison of n items: ``better`` / ``worse`` / ``ties`` counts and the exact
    two-sided sign-test ``p_value`` (ties dropped)."""

    better: int
    worse: int
    ties: int
    p_value: float


def sign_test(differences: Tensor | list[float], tolerance: float = 0.0) -> SignTest:
    """Exact sign test of paired ``differences`` (positive: better); ``|d| <= tolerance`` is a
    tie. ``p = min(1, 2 * sum_{k <= min(n+, n-)} C(n, k) / 2^n)`` with ``n = n+ + n-`` (1 when
    n = 0)."""
    values = torch.as_tensor(differences, dtype=torch.float64).flatten()
    if torch.isnan(values).any():
        raise ValueError("sign_test: differences contain NaN")
    better = int((values > tolerance).sum())
    worse = int((values < -tolerance).sum())
    n = better + worse
    low = min(better, worse)
    tail = sum(math.comb(n, k) for k in range(low + 1)) / 2**n if n else 1.0
    return SignTest(better, worse, len(values) - n, min(1.0, 2 * tail))


def view_scores(normals: Tensor, colours: Tensor, true_normals: Tensor, true_colours: Tensor,
                true_masks: Tensor) -> dict[str, Any]:
    """The image judges of one object's generated views ``(V, 3, R, R)`` against its renders
    (masks ``(V, R, R)``): ``iou`` (mean over views) and ``iou_views``, ``normal_error_deg``
    (mean over views with a mask), colour ``psnr`` and ``ssim`` (means over views)."""
    mask = foreground_mask(normals)
    iou = silhouette_iou(mask, true_masks)
    error = normal_angular_error(normals, true_normals, mask, true_masks)
    colour = image_metrics(colours.clamp(0, 1), true_colours)
    return {"iou": float(iou.mean()), "iou_views": iou.tolist(),
            "normal_error_deg": float(error.nanmean()), "psnr": colour["psnr"],
            "ssim": colour["ssim"]}


@torch.no_grad()
def judge_rollout(pipe: MultiViewPipeline, x0: Tensor, truth: tuple[Tensor, Tensor, Tensor],
                  joints: Tensor, scores: dict[str, PoseScore]) -> tuple[dict[str, Any], Tensor]:
    """Judge one object's generated latents against its true views.

    Args:
        pipe: the pipeline that generated ``x0`` (its VAE decodes, its row layout).
        x0: ``(2 * V, 4, h, w)`` rows ``[normal | colour]`` of one object.
        truth: true ``(normals, colours, masks)``: ``(V_body, 3, R, R)`` x 2 in [0, 1] and
            ``(V_body, R, R)`` bool.
        joints: ``(1, J, 3)`` in normalised body coordinates.
        scores: PoseScores by name; each adds ``<name>_posescore``.

    Returns:
        (:func:`view_scores` plus the PoseScores, decoded views ``(2, V_body, 3, R, R)``).
    """
    body = pipe.unet.config.num_body_views
    latents = latents_from_rows(x0, pipe.views)[:, :body]
    images = pipe.decode(x0).unflatten(0, (2, pipe.views))[:, :body]
    out = view_scores(images[0], images[1], *truth)
    for name, score in scores.items():
        out[f"{name}_posescore"] = float(score(latents, joints))
    return out, images
