"""Fit SMPL-X to generated views (PSHuman's first reconstruction stage).

Parameters: global orientation (3), body pose (63, axis-angle), shape (betas), and a similarity
placing the body in the view box: ``box = exp(log_scale) * (smplx_vertices - rest_centre) +
translation``. Losses (:mod:`drpose.recon.losses`): the distance-based silhouette terms and the
L1 normal loss, per view weighted as PSHuman (1, .4, .8, 1, .8, .4), plus quadratic priors on
body pose and betas. Adam from the rest pose (PSHuman starts from a regressed SMPL-X; drpose has no
regressor, so the priors keep the rest pose where the views say nothing); the scale and the
translation start from the front mask's box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import smplx
import torch
from torch import Tensor

from drpose._progress import progress as progress_bar
from drpose.body import posed_body
from drpose.recon.losses import LossWeights, ViewTargets, view_losses
from drpose.render import cameras


@dataclass(frozen=True)
class FitConfig:
    """SMPL-X fitting options. iterations: Adam steps; lr: step size of the pose/shape angles
    (radians) and the similarity (log-scale, box units); pose_prior/shape_prior: weights of the
    mean squared body pose (rad^2) and betas."""

    iterations: int = 100
    lr: float = 0.02
    pose_prior: float = 1e-3
    shape_prior: float = 1e-3
    losses: LossWeights = field(default_factory=LossWeights)


@dataclass
class FitResult:
    """A fitted body. vertices: (N, 3) box units; faces: (F, 3) int64; body_pose (1, 63),
    global_orient (1, 3), betas (1, num_betas) radians / shape coefficients; scale: box units per
    metre; translation: (3,) box units; rest_centre: (3,) metres (the similarity's centre);
    losses: the last iteration's loss parts."""

    vertices: Tensor
    faces: Tensor
    body_pose: Tensor
    global_orient: Tensor
    betas: Tensor
    scale: float
    translation: Tensor
    rest_centre: Tensor
    losses: dict[str, float]


def _initial_similarity(rest: Tensor, targets: ViewTargets) -> tuple[float, Tensor]:
    """Scale (box units / metre) and translation putting the rest body's box over the front
    mask's box (height and centre), or PSHuman's inference normalisation when the front view
    carries no mask."""
    lo, hi = rest.amin(0), rest.amax(0)
    front = targets.foreground[0]
    if targets.weights[0] <= 0 or not front.any():
        norm = cameras.normalize_body(rest[None])
        return float(norm.scale[0]), torch.zeros(3)
    rows = front.any(dim=1).nonzero()[:, 0]
    cols = front.any(dim=0).nonzero()[:, 0]
    h, w = front.shape
    pixel = cameras.ORTHO_SCALE / h  # box units per pixel
    height = (rows.max() - rows.min() + 1).item() * pixel
    scale = height / (hi - lo)[1].item()
    centre_x = ((cols.max() + cols.min()).item() + 1 - w) / 2 * pixel
    centre_y = (h - 1 - (rows.max() + rows.min()).item()) / 2 * pixel
    return scale, torch.tensor([centre_x, centre_y, 0.0])


def fit_smplx_to_views(
    model: smplx.SMPLX,
    targets: ViewTargets,
    config: FitConfig = FitConfig(),
    *,
    progress: bool = False,
) -> FitResult:
    """Fit SMPL-X to the views' masks and normals.

    Args:
        model: an SMPL-X model from :func:`drpose.body.load_smplx` (float32, CPU or CUDA).
        targets: :class:`drpose.recon.losses.ViewTargets` of the generated views.
        config: iterations, step size, priors.
        progress: show a progress bar (:func:`drpose._progress.progress`).
    """
    dtype = torch.float32
    zeros = {"dtype": dtype}
    body_pose = torch.zeros(1, 63, **zeros, requires_grad=True)
    global_orient = torch.zeros(1, 3, **zeros, requires_grad=True)
    betas = torch.zeros(1, model.num_betas, **zeros, requires_grad=True)
    with torch.no_grad():
        rest = posed_body(model, body_pose).vertices[0]
    rest_centre = (rest.amin(0) + rest.amax(0)) / 2
    scale0, translation0 = _initial_similarity(rest, targets)
    log_scale = torch.tensor(math.log(scale0), requires_grad=True)
    translation = translation0.clone().requires_grad_(True)
    faces = model.faces_tensor.long()
    tri = faces.to(torch.int32).contiguous()
    optimizer = torch.optim.Adam(
        [{"params": [body_pose, global_orient, betas], "lr": config.lr},
         {"params": [log_scale, translation], "lr": config.lr * 0.1}])

    def box_vertices() -> Tensor:
        body = posed_body(model, body_pose, global_orient, betas).vertices[0]
        return log_scale.exp() * (body - rest_centre) + translation

    parts: dict[str, float] = {}
    for _ in progress_bar(range(config.iterations), desc="fit SMPL-X", enabled=progress):
        optimizer.zero_grad(set_to_none=True)
        loss, parts = view_losses(box_vertices(), tri, targets, config.losses)
        loss = (loss + config.pose_prior * body_pose.square().mean()
                + config.shape_prior * betas.square().mean())
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        vertices = box_vertices()
    return FitResult(
        vertices=vertices, faces=faces, body_pose=body_pose.detach(),
        global_orient=global_orient.detach(), betas=betas.detach(),
        scale=float(log_scale.detach().exp()), translation=translation.detach(),
        rest_centre=rest_centre, losses=parts)
