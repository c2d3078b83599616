"""PoseScore: how well generated multi-view latents show a given 3D pose (higher is better).

    r(x0, J) = -( BCE(g_skel(x0), heatmaps of R(J))  [+ lpips_weight * LPIPS(maps, heatmaps)] )

* ``x0``: the generated latents of B objects, ``(B, V, 8, h, w)``: per view the normal latent
  and the colour latent concatenated on channels (:func:`latents_from_rows` makes this from the
  pipeline's rows). No VAE decode.
* g_skel (:class:`drpose.models.SkeletonNet`) maps each view to skeleton-map logits
  ``(B, V, 23, H, W)``; it is frozen (eval mode, no parameter takes gradients) but differentiable
  w.r.t. its input, so the reward's gradient reaches the latents.
* R: the ground-truth joints projected into the same views by
  :func:`drpose.render.cameras.project_joints` at the maps' size (views 3 and 4 mirrored as the
  network generates them, ``visibility="frame"``), exactly as g_skel's training targets were
  (:mod:`drpose.train.skel`).
* BCE: :func:`drpose.ops.pose_heatmap_loss` (fused: the target maps are never materialised), per
  sample (``reduction="none"``): mean over visible maps and pixels.
* LPIPS (optional): only with a perceptual-distance module the caller loads from a local file (its
  backbone weights cannot be downloaded here), e.g. ``lpips.LPIPS(pretrained=True,
  model_path=...)``: it gets the predicted maps (sigmoid) and target heatmaps as RGB images in
  [-1, 1] (:func:`drpose.render.conditions.heatmaps_to_rgb`), ``(B*V, 3, H, W)`` each, and
  returns one distance per image; the term is its mean over views. It materialises the targets.

Normalisation: the joints are in world metres; where the body sits in the view box depends on
the body's mesh (:func:`drpose.render.cameras.normalize_body`), which the reward does not see.
Pass ``normalization`` (from the dataset, e.g. :meth:`drpose.data.multiview.MultiViewRenders.
normalization`), or pass joints already in normalised body coordinates
(:meth:`~drpose.data.multiview.MultiViewRenders.normalized_joints`) and no normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from drpose._devices import require_device
from drpose.models.skeleton import SkeletonNet
from drpose.ops import pose_heatmap_loss, render_heatmaps
from drpose.render import cameras
from drpose.render.conditions import heatmaps_to_rgb

Lpips = Callable[[Tensor, Tensor], Tensor]


def latents_from_rows(rows: Tensor, views: int) -> Tensor:
    """The pipeline's latent rows -> PoseScore's layout.

    Args:
        rows: ``(2*B*V, 4, h, w)``, rows ``[normal | colour]``, each (object, view) with the view
            fastest (:meth:`MultiViewPipeline.prepare_latents`, the scheduler's x0).
        views: V, views per object (``pipe.views``).

    Returns:
        ``(B, V, 8, h, w)``: channels ``[normal (4) | colour (4)]`` of each view. A view, not a
        copy, where possible; differentiable.
    """
    if rows.dim() != 4 or rows.shape[0] % (2 * views):
        raise ValueError(f"rows must be (2*B*{views}, C, h, w), got {tuple(rows.shape)}")
    domains = rows.unflatten(0, (2, rows.shape[0] // (2 * views), views))  # (2, B, V, C, h, w)
    return torch.cat([domains[0], domains[1]], dim=2)


def identity_normalization(batch: int, like: Tensor) -> cameras.BodyNormalization:
    """A normalisation that leaves (already normalised) joints unchanged."""
    return cameras.BodyNormalization(
        center=torch.zeros(batch, 3, dtype=like.dtype, device=like.device),
        scale=torch.ones(batch, dtype=like.dtype, device=like.device))


class PoseScore(nn.Module):
    """PoseScore (module docstring).

    Args:
        skel_net: trained g_skel; frozen here (``requires_grad_(False)``, eval mode for good).
        views: the views the latents hold, in order (default: the 6 body views).
        sigma: heatmap Gaussian standard deviation in map pixels (as g_skel was trained).
        lpips: optional perceptual distance (module docstring); None drops the term.
        lpips_weight: its weight.
        backend: :func:`drpose.ops.pose_heatmap_loss` backend.
    """

    def __init__(self, skel_net: SkeletonNet, views: cameras.Views = None, sigma: float = 1.5,
                 lpips: Lpips | None = None, *, lpips_weight: float = 1.0,
                 backend: str = "auto") -> None:
        super().__init__()
        self.skel_net = skel_net.eval().requires_grad_(False)
        self.views = cameras.resolve_views(views)
        self.sigma = sigma
        self.lpips = lpips
        self.lpips_weight = lpips_weight
        self.backend = backend

    def train(self, mode: bool = True) -> PoseScore:
        """g_skel stays in eval mode whatever the caller does."""
        super().train(mode)
        self.skel_net.eval()
        return self

    def targets(self, joints: Tensor, size: tuple[int, int],
                normalization: cameras.BodyNormalization | None = None
                ) -> tuple[Tensor, Tensor]:
        """Keypoints (B, V, J, 2) in map pixels and visibility (B, V, J) of the joints."""
        if normalization is None:
            normalization = identity_normalization(joints.shape[0], joints)
        return cameras.project_joints(joints, self.views, size, normalization=normalization)

    def logits(self, latents: Tensor) -> Tensor:
        """g_skel's skeleton-map logits ``(B, V, J, H, W)`` of latents ``(B, V, C, h, w)``."""
        if latents.dim() != 5 or latents.shape[1] != len(self.views):
            raise ValueError(f"latents must be (B, V={len(self.views)}, C, h, w), got "
                             f"{tuple(latents.shape)}")
        weight = next(self.skel_net.parameters())
        require_device(weight.device, "g_skel", latents=latents)
        flat = self.skel_net(latents.flatten(0, 1).to(weight.dtype))
        return flat.unflatten(0, latents.shape[:2])

    def forward(self, latents: Tensor, joints: Tensor,
                normalization: cameras.BodyNormalization | None = None) -> Tensor:
        """``(B,)`` PoseScore of latents ``(B, V, 8, h, w)`` for joints ``(B, J, 3)`` (world
        metres with ``normalization``, else normalised body coordinates). Differentiable
        w.r.t. ``latents``."""
        if joints.dim() != 3 or joints.shape[0] != latents.shape[0] or joints.shape[-1] != 3:
            raise ValueError(f"joints must be (B={latents.shape[0]}, J, 3), got "
                             f"{tuple(joints.shape)}")
        require_device(latents.device, "latents", joints=joints)
        logits = self.logits(latents)
        size = tuple(logits.shape[-2:])
        keypoints, visible = self.targets(joints.to(logits.dtype), size, normalization)
        distance = pose_heatmap_loss(logits, keypoints.detach(), visible, sigma=self.sigma,
                                     loss="bce", reduction="none", backend=self.backend)
        if self.lpips is not None:
            distance = distance + self.lpips_weight * self.lpips_term(logits, keypoints, visible)
        return -distance

    def lpips_term(self, logits: Tensor, keypoints: Tensor, visible: Tensor) -> Tensor:
        """(B,) mean over views of the LPIPS distance between predicted and target maps."""
        batch, views = logits.shape[:2]
        target = render_heatmaps(keypoints.detach(), visible, size=tuple(logits.shape[-2:]),
                                 sigma=self.sigma)
        pred_rgb = heatmaps_to_rgb(torch.sigmoid(logits)).flatten(0, 1) * 2 - 1
        target_rgb = heatmaps_to_rgb(target.to(logits.dtype)).flatten(0, 1) * 2 - 1
        per_image = self.lpips(pred_rgb, target_rgb).reshape(batch, views)
        return per_image.mean(dim=1)
