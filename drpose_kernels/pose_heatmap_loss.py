"""Triton kernels of the PoseScore heatmap loss (the CUDA path of ``drpose.ops.pose_heatmap_loss``).

One program handles one skeleton map m (of M = B*V*J) and walks its H*W pixels in tiles. The
Gaussian target is computed on the fly and never stored:

    t[y, x] = exp(-((x - kx)^2 + (y - ky)^2) / (2 sigma^2))

One kernel, three uses (constexpr flags): the forward, the backward, and the one-pass
forward + gradient (the loss sums and weight * df/dz from one read of the logits, one exp(-|z|)
per pixel shared by the loss and the sigmoid).

Forward:   out[m] = weight[m] * sum_{y,x} f(z, t)
           bce: f = max(z, 0) - z t + log1p(exp(-|z|))        mse: f = (z - t)^2
Backward:  with c = coeff[m] (= upstream gradient * weight[m]),
           dL/dz  = c * (sigmoid(z) - t)   (bce)  |  c * 2 (z - t)   (mse)
           dL/dkx = c * sum (df/dt) t (x - kx) / sigma^2,   df/dt = -z (bce) | -2 (z - t) (mse)
           dL/dky = c * sum (df/dt) t (y - ky) / sigma^2

Logits may be fp16/bf16/fp32/fp64; arithmetic runs in fp32 (fp64 for fp64 logits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOSS_CODES = {"bce": 0, "mse": 1}
BLOCK = 1024


@triton.jit
def _log1p_unit(e):
    # log1p(e) for e in [0, 1] without libdevice (Kahan: log(u) * e / (u - 1), u = 1 + e).
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _target(idx, W, kx, ky, inv_two_sigma2):
    x = (idx % W).to(kx.dtype)
    y = (idx // W).to(kx.dtype)
    return tl.exp(-((x - kx) * (x - kx) + (y - ky) * (y - ky)) * inv_two_sigma2), x, y


@triton.jit
def _map_kernel(logits_ptr, kp_ptr, scale_ptr, params_ptr, out_ptr, grad_ptr, grad_kp_ptr, H, W,
                LOSS: tl.constexpr, LOSS_SUM: tl.constexpr, GRAD: tl.constexpr,
                KEYPOINTS_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """One program per map m, scale c = scale[m]: out[m] = c sum f (LOSS_SUM), grad = c df/dz
    (GRAD), grad_kp[m] = c / sigma^2 sum df/dt t (x - kx, y - ky) (KEYPOINTS_GRAD); one exp(-|z|)
    per pixel shared by the loss and the sigmoid."""
    m = tl.program_id(0).to(tl.int64)
    n = H * W
    c = tl.load(scale_ptr + m)
    kx = tl.load(kp_ptr + 2 * m)
    ky = tl.load(kp_ptr + 2 * m + 1)
    inv_two_sigma2 = tl.load(params_ptr)
    acc_f = tl.zeros([BLOCK], dtype=c.dtype)
    acc_x = tl.zeros([BLOCK], dtype=c.dtype)
    acc_y = tl.zeros([BLOCK], dtype=c.dtype)
    if (c != 0) | GRAD:  # a zero-weight map adds nothing to the loss; its gradient is written 0
        for start in range(0, n, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            mask = idx < n
            z = tl.load(logits_ptr + m * n + idx, mask=mask, other=0).to(c.dtype)
            t, x, y = _target(idx, W, kx, ky, inv_two_sigma2)
            if LOSS == 0:
                e = tl.exp(-tl.abs(z))
                f = tl.maximum(z, 0.0) - z * t + _log1p_unit(e)
                d_logit = tl.where(z >= 0, 1.0, e) / (1.0 + e) - t
                d_target = -z
            else:
                f = (z - t) * (z - t)
                d_logit = 2.0 * (z - t)
                d_target = -2.0 * (z - t)
            if LOSS_SUM:
                acc_f += tl.where(mask, f, 0.0)
            if GRAD:
                grad = (c * d_logit).to(grad_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
                tl.store(grad_ptr + m * n + idx, grad, mask=mask)
            if KEYPOINTS_GRAD:
                g = tl.where(mask, d_target * t, 0.0)
                acc_x += g * (x - kx)
                acc_y += g * (y - ky)
    if LOSS_SUM:
        tl.store(out_ptr + m, tl.sum(acc_f, axis=0) * c)
    if KEYPOINTS_GRAD:
        kp_scale = c * 2.0 * inv_two_sigma2  # c / sigma^2
        tl.store(grad_kp_ptr + 2 * m, tl.sum(acc_x, axis=0) * kp_scale)
        tl.store(grad_kp_ptr + 2 * m + 1, tl.sum(acc_y, axis=0) * kp_scale)


def _params(sigma: float, like: torch.Tensor) -> torch.Tensor:
    # Passed as a tensor so fp64 inputs keep an fp64 1/(2 sigma^2) (Python floats become fp32).
    return torch.tensor([1.0 / (2.0 * sigma * sigma)], dtype=like.dtype, device=like.device)


def _launch(logits: torch.Tensor, keypoints: torch.Tensor, scale: torch.Tensor, sigma: float,
            loss: str, *, loss_sum: bool, grad: bool, keypoints_grad: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    maps, height, width = logits.shape
    out = torch.empty_like(scale) if loss_sum else scale.new_empty(0)
    grad_logits = torch.empty_like(logits) if grad else logits.new_empty(0)
    grad_keypoints = scale.new_empty((maps if keypoints_grad else 0, 2))
    if maps:
        _map_kernel[(maps,)](logits, keypoints, scale, _params(sigma, scale), out, grad_logits,
                             grad_keypoints, height, width, LOSS=LOSS_CODES[loss],
                             LOSS_SUM=loss_sum, GRAD=grad, KEYPOINTS_GRAD=keypoints_grad,
                             BLOCK=BLOCK)
    return out, grad_logits, grad_keypoints


def map_loss_forward(logits: torch.Tensor, keypoints: torch.Tensor, weight: torch.Tensor,
                     sigma: float, loss: str) -> torch.Tensor:
    """Per-map weighted loss sums.

    logits (M, H, W) contiguous; keypoints (M, 2) and weight (M,) contiguous in the
    accumulation dtype (fp64 for fp64 logits, else fp32). Returns (M,) in that dtype.
    """
    return _launch(logits, keypoints, weight, sigma, loss, loss_sum=True, grad=False,
                   keypoints_grad=False)[0]


def map_loss_backward(logits: torch.Tensor, keypoints: torch.Tensor, coeff: torch.Tensor,
                      sigma: float, loss: str, keypoints_grad: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``map_loss_forward``; coeff (M,) = upstream gradient * weight.

    Returns grad_logits (M, H, W) in the logits dtype and grad_keypoints (M, 2) (or (0, 2) when
    ``keypoints_grad`` is False) in the accumulation dtype.
    """
    _, grad_logits, grad_keypoints = _launch(logits, keypoints, coeff, sigma, loss,
                                             loss_sum=False, grad=True,
                                             keypoints_grad=keypoints_grad)
    return grad_logits, grad_keypoints


def map_loss_forward_grad(logits: torch.Tensor, keypoints: torch.Tensor, weight: torch.Tensor,
                          sigma: float, loss: str, keypoints_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass: the sums of ``map_loss_forward`` and the gradients of ``map_loss_backward`` for
    coeff = weight, from one read of the logits."""
    return _launch(logits, keypoints, weight, sigma, loss, loss_sum=True, grad=True,
                   keypoints_grad=keypoints_grad)
