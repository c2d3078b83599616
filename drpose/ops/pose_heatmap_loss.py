"""PoseScore's heatmap distance, fused: ``pose_heatmap_loss`` and ``render_heatmaps``.

Predicted skeleton maps z (one per view and joint) are compared with Gaussian heatmaps of the
projected ground-truth joints. The fused backends compute the target on the fly and never store
it; ``pose_heatmap_loss_reference`` materialises it and is the specification.

Conventions (``../ARCHITECTURE.md``): keypoints are (x, y) in heatmap pixel units, pixel centres at
integer coordinates, x to the right, y down. For a map of size H x W and keypoint (kx, ky):

    t[y, x] = exp(-((x - kx)^2 + (y - ky)^2) / (2 sigma^2)),   x in 0..W-1, y in 0..H-1
    bce: f(z, t) = max(z, 0) - z t + log1p(exp(-|z|))      (z are logits)
    mse: f(z, t) = (z - t)^2                                (z are heatmap values)
    loss[b] = sum_{visible (v, j)} sum_{y, x} f / (n_visible[b] * H * W),   0 if none is visible

Reduction "mean" averages loss[b] over the batch, "sum" adds it, "none" returns it (B,).

One pass when the logits need a gradient (the default then, cpu and triton backends): the kernel
reads each logit once and writes the loss sums with weight * df/dz (bce: sigmoid(z) - t from the
exp(-|z|) the loss uses), which is kept; the backward only scales it in place by the upstream
gradient, per map (nothing to do when that is 1, as after loss.backward() of "mean" or "sum",
whose 1/B is folded into the weights), so no memory beyond the gradient itself is used. The kept
gradient is in the logits' dtype: for float16/bfloat16 with an upstream gradient other than 1 it
is rounded twice (kept, then scaled). Without a logits gradient the loss-only kernel runs, and
the backward (keypoints only, or a second backward through a retained graph) reads the logits
again.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drpose import _extension
from drpose.ops._dispatch import (
    BACKENDS,
    check_output_size,
    check_same_device,
    check_size,
    check_tensor,
    resolve_backend,
)

OP = "pose_heatmap_loss"
LOSS_BACKENDS = (*BACKENDS, "cuda")
LOSSES = ("bce", "mse")
REDUCTIONS = ("mean", "sum", "none")


def render_heatmaps(keypoints: Tensor, visible: Tensor | None = None, *,
                    size: tuple[int, int], sigma: float = 2.0) -> Tensor:
    """Gaussian target heatmaps of keypoints.

    Args:
        keypoints: (..., 2) float, (x, y) in pixel units of the heatmap (pixel centres at integers).
        visible: (...) = keypoints.shape[:-1] bool, or None for all visible; maps of invisible
            keypoints are all zero.
        size: (H, W) of the heatmaps, positive ints; the output must fit in the device's memory.
        sigma: Gaussian standard deviation in pixels, > 0.

    Returns:
        (..., H, W) heatmaps with peak 1 at the keypoint, in the keypoints' dtype.
    """
    check_tensor("render_heatmaps", "keypoints", keypoints, floating=True)
    if keypoints.dim() == 0 or keypoints.shape[-1] != 2:
        raise ValueError("render_heatmaps(): keypoints must have shape (..., 2), got "
                         f"{tuple(keypoints.shape)}")
    _check_sigma("render_heatmaps", sigma)
    height, width = check_size("render_heatmaps", "size", size)
    if visible is not None:
        check_tensor("render_heatmaps", "visible", visible)
        if visible.dtype != torch.bool:
            raise TypeError(f"render_heatmaps(): visible must be a bool tensor, got "
                            f"{visible.dtype}")
        if visible.shape != keypoints.shape[:-1]:
            raise ValueError(f"render_heatmaps(): visible must have keypoints' shape without its "
                             f"last dimension, {tuple(keypoints.shape[:-1])}, got "
                             f"{tuple(visible.shape)}")
        check_same_device("render_heatmaps", keypoints=keypoints, visible=visible)
    check_output_size("render_heatmaps", "size", size, (*keypoints.shape[:-1], height, width),
                      keypoints.dtype, keypoints.device)
    xs = torch.arange(width, dtype=keypoints.dtype, device=keypoints.device)
    ys = torch.arange(height, dtype=keypoints.dtype, device=keypoints.device)
    gx = torch.exp(-(xs - keypoints[..., 0:1]) ** 2 / (2 * sigma**2))  # (..., W)
    gy = torch.exp(-(ys - keypoints[..., 1:2]) ** 2 / (2 * sigma**2))  # (..., H)
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)  # (..., H, W)
    if visible is not None:
        maps = maps * visible.to(maps.dtype)[..., None, None]
    return maps


def pose_heatmap_loss_reference(logits: Tensor, keypoints: Tensor, visible: Tensor | None = None,
                                *, sigma: float = 2.0, loss: str = "bce",
                                reduction: str = "mean") -> Tensor:
    """The specification of :func:`pose_heatmap_loss` in plain torch (materialises the target).

    Computes in the dtype of ``logits`` promoted to at least float32.
    """
    batch, views, joints, height, width = logits.shape
    acc = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(acc)
    if visible is None:
        visible = torch.ones(batch, views, joints, dtype=torch.bool, device=logits.device)
    target = render_heatmaps(keypoints.to(acc), size=(height, width), sigma=sigma)
    if loss == "bce":
        pointwise = z.clamp(min=0) - z * target + torch.log1p(torch.exp(-z.abs()))
    else:
        pointwise = (z - target) ** 2
    vis = visible.to(acc)
    per_map = pointwise.sum(dim=(-2, -1)) * vis  # (B, V, J)
    n_visible = vis.sum(dim=(1, 2))
    per_sample = per_map.sum(dim=(1, 2)) / (n_visible.clamp(min=1) * height * width)
    return _reduce(per_sample, reduction)


def pose_heatmap_loss(logits: Tensor, keypoints: Tensor, visible: Tensor | None = None, *,
                      sigma: float = 2.0, loss: str = "bce", reduction: str = "mean",
                      backend: str = "auto") -> Tensor:
    """PoseScore heatmap loss between skeleton maps and Gaussian heatmaps of keypoints (fused).

    Args:
        logits: (B, V, J, H, W) float16 | bfloat16 | float32 | float64. Predicted maps: logits
            for ``loss="bce"``, heatmap values for ``loss="mse"``.
        keypoints: (B, V, J, 2) float, (x, y) in heatmap pixel units (pixel centres at
            integers, y down). Differentiable: gradients flow when it requires grad.
        visible: (B, V, J) bool, or None for all visible. Invisible maps contribute nothing.
        sigma: Gaussian standard deviation in heatmap pixels, > 0.
        loss: ``"bce"`` or ``"mse"``.
        reduction: ``"mean"`` | ``"sum"`` over the batch, or ``"none"`` for the (B,) losses.
        backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"`` | ``"triton"`` (see
            :mod:`drpose.ops._dispatch`).

    Returns:
        A scalar, or (B,) for ``reduction="none"``; float32 (float64 for float64 logits).
        Half-precision logits are accumulated in float32.
    """
    _check_inputs(logits, keypoints, visible, sigma, loss, reduction)
    device = check_same_device(OP, logits=logits, keypoints=keypoints, visible=visible)
    backend = resolve_backend(OP, backend, device, LOSS_BACKENDS)
    if backend == "torch":
        return pose_heatmap_loss_reference(logits, keypoints, visible, sigma=sigma, loss=loss,
                                           reduction=reduction)
    batch, views, joints, height, width = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if visible is None:
        visible = torch.ones(batch, views, joints, dtype=torch.bool, device=device)
    vis = visible.to(acc)
    n_visible = vis.sum(dim=(1, 2), keepdim=True)
    # "mean" is folded into the weights (then summed), so that a plain loss.backward() hands the
    # one-pass gradient an upstream gradient of exactly 1 and it needs no rescaling.
    per_sample_count = batch if reduction == "mean" and batch else 1
    weight = vis / (n_visible.clamp(min=1) * (height * width * per_sample_count))  # (B, V, J)
    args = (logits.reshape(-1, height, width).contiguous(),
            keypoints.to(acc).reshape(-1, 2).contiguous(), weight.reshape(-1).contiguous(),
            float(sigma), loss, backend)
    if torch.is_grad_enabled() and logits.requires_grad and backend in ONE_PASS_BACKENDS:
        per_map, _, _ = _map_loss_one_pass(*args, keypoints.requires_grad)
    else:
        per_map = _map_loss(*args)
    per_sample = per_map.reshape(batch, views * joints).sum(dim=1)
    return per_sample.sum() if reduction == "mean" else _reduce(per_sample, reduction)


# ---- the op library entries --------------------------------------------------------------------
# The C++ kernels of drpose._C (backend "cpu": pose_heatmap_loss_cpu.cpp, "cuda":
# pose_heatmap_loss_cuda.cu, one per-pixel maths: pose_heatmap_loss_math.h) or Triton's.
_NATIVE = ("cpu", "cuda")


def _native(entry: str, backend: str):
    return getattr(_extension.require(), f"pose_heatmap_loss_{entry}_{backend}")


# drpose::pose_heatmap_map_loss (the loss only; its backward reads the logits again) and
# drpose::pose_heatmap_map_loss_one_pass (the loss and its gradient from one read of the logits,
# the gradient kept for the backward, which only scales it by the upstream gradient).


@torch.library.custom_op("drpose::pose_heatmap_map_loss", mutates_args=())
def _map_loss(logits: Tensor, keypoints: Tensor, weight: Tensor, sigma: float, loss: str,
              backend: str) -> Tensor:
    """out[m] = weight[m] * sum_{y,x} f(logits[m], t_m); logits (M,H,W), keypoints (M,2),
    weight (M,)."""
    if backend in _NATIVE:
        return _native("forward", backend)(logits, keypoints, weight, sigma, LOSSES.index(loss))
    from drpose_kernels import pose_heatmap_loss as kernels

    return kernels.map_loss_forward(logits, keypoints, weight, sigma, loss)


@_map_loss.register_fake
def _(logits, keypoints, weight, sigma, loss, backend):
    return torch.empty_like(weight)


@torch.library.custom_op("drpose::pose_heatmap_map_loss_backward", mutates_args=())
def _map_loss_backward(grad: Tensor, logits: Tensor, keypoints: Tensor, weight: Tensor,
                       sigma: float, loss: str, backend: str,
                       keypoints_grad: bool) -> tuple[Tensor, Tensor]:
    """Gradients of ``drpose::pose_heatmap_map_loss`` w.r.t. logits and (optionally) keypoints."""
    coeff = (grad * weight).contiguous()
    if backend in _NATIVE:
        return _native("backward", backend)(logits, keypoints, coeff, sigma, LOSSES.index(loss),
                                            keypoints_grad)
    from drpose_kernels import pose_heatmap_loss as kernels

    return kernels.map_loss_backward(logits, keypoints, coeff, sigma, loss, keypoints_grad)


@_map_loss_backward.register_fake
def _(grad, logits, keypoints, weight, sigma, loss, backend, keypoints_grad):
    rows = keypoints.shape[0] if keypoints_grad else 0
    return torch.empty_like(logits), keypoints.new_empty((rows, 2))


def _setup_context(ctx, inputs, output):
    logits, keypoints, weight, sigma, loss, backend = inputs
    ctx.save_for_backward(logits, keypoints, weight)
    ctx.options = (sigma, loss, backend)


def _backward(ctx, grad):
    logits, keypoints, weight = ctx.saved_tensors
    keypoints_grad = ctx.needs_input_grad[1]
    grad_logits, grad_keypoints = _map_loss_backward(grad, logits, keypoints, weight,
                                                     *ctx.options, keypoints_grad)
    return grad_logits, grad_keypoints if keypoints_grad else None, None, None, None, None


_map_loss.register_autograd(_backward, setup_context=_setup_context)

ONE_PASS_BACKENDS = ("cpu", "cuda", "triton")


@torch.library.custom_op("drpose::pose_heatmap_map_loss_one_pass", mutates_args=())
def _map_loss_one_pass(logits: Tensor, keypoints: Tensor, weight: Tensor, sigma: float,
                       loss: str, backend: str,
                       keypoints_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out (M,) as ``drpose::pose_heatmap_map_loss``, weight * df/dz (M, H, W) in the logits'
    dtype, weight * df/dk (M, 2), or (0, 2) unless ``keypoints_grad``) from one read."""
    if backend in _NATIVE:
        return _native("forward_grad", backend)(logits, keypoints, weight, sigma,
                                                LOSSES.index(loss), keypoints_grad)
    from drpose_kernels import pose_heatmap_loss as kernels

    return kernels.map_loss_forward_grad(logits, keypoints, weight, sigma, loss, keypoints_grad)


@_map_loss_one_pass.register_fake
def _(logits, keypoints, weight, sigma, loss, backend, keypoints_grad):
    rows = keypoints.shape[0] if keypoints_grad else 0
    return torch.empty_like(weight), torch.empty_like(logits), keypoints.new_empty((rows, 2))


@torch.library.custom_op("drpose::pose_heatmap_scale_maps_", mutates_args=("maps",))
def _scale_maps_(maps: Tensor, scale: Tensor) -> None:
    """maps[m] *= scale[m] in place (maps (M, H, W), scale (M,)); nothing to do when all are 1."""
    if not bool((scale == 1).all()):
        maps.mul_(scale.reshape(-1, 1, 1))


@_scale_maps_.register_fake
def _(maps, scale):
    return None


def _setup_one_pass_context(ctx, inputs, output):
    logits, keypoints, weight, sigma, loss, backend, _ = inputs
    _, grad_logits, grad_keypoints = output
    ctx.mark_non_differentiable(grad_logits, grad_keypoints)
    ctx.set_materialize_grads(False)  # no (M, H, W) zeros for the gradients' own "gradient"
    # The kept gradient is an attribute, not a saved tensor: the first backward scales it in place
    # and drops the reference, so the gradient handed on is that very tensor (no copy). The inputs
    # are saved for a second backward (retain_graph=True), which recomputes.
    ctx.kept = (grad_logits, grad_keypoints)
    ctx.save_for_backward(logits, keypoints, weight)
    ctx.options = (sigma, loss, backend)


def _one_pass_backward(ctx, grad, _grad_logits, _grad_keypoints):
    if grad is None:  # the sums were not used
        return None, None, None, None, None, None, None
    keypoints_grad = ctx.needs_input_grad[1]
    if ctx.kept is None:  # a second backward through a retained graph
        logits, keypoints, weight = ctx.saved_tensors
        grad_logits, grad_keypoints = _map_loss_backward(grad, logits, keypoints, weight,
                                                         *ctx.options, keypoints_grad)
    else:
        (grad_logits, grad_keypoints), ctx.kept = ctx.kept, None
        _scale_maps_(grad_logits, grad)
        grad_keypoints = grad_keypoints * grad[:, None] if keypoints_grad else None
    return grad_logits, grad_keypoints, None, None, None, None, None


_map_loss_one_pass.register_autograd(_one_pass_backward, setup_context=_setup_one_pass_context)


# ---- checks ------------------------------------------------------------------------------------


def _check_sigma(op: str, sigma: float) -> None:
    if not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"{op}(): sigma must be a positive number of pixels, got {sigma!r}")


def _check_inputs(logits: Tensor, keypoints: Tensor, visible: Tensor | None, sigma: float,
                  loss: str, reduction: str) -> None:
    check_tensor(OP, "logits", logits, dims=5, floating=True)
    check_tensor(OP, "keypoints", keypoints, dims=4, floating=True)
    batch, views, joints = logits.shape[:3]
    if keypoints.shape != (batch, views, joints, 2):
        raise ValueError(f"{OP}(): keypoints must have shape (B, V, J, 2) = "
                         f"({batch}, {views}, {joints}, 2) to match logits "
                         f"{tuple(logits.shape)}, got {tuple(keypoints.shape)}")
    if visible is not None:
        check_tensor(OP, "visible", visible, dims=3)
        if visible.dtype != torch.bool:
            raise TypeError(f"{OP}(): visible must be a bool tensor, got {visible.dtype}")
        if visible.shape != (batch, views, joints):
            raise ValueError(f"{OP}(): visible must have shape (B, V, J) = ({batch}, {views}, "
                             f"{joints}), got {tuple(visible.shape)}")
    _check_sigma(OP, sigma)
    if loss not in LOSSES:
        raise ValueError(f"{OP}(): loss must be one of {LOSSES}, got {loss!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{OP}(): reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean() if per_sample.numel() else per_sample.sum()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
