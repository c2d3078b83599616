"""Image metrics, for training (held-out maps) and evaluation (generated views) alike.

:func:`image_metrics`: PSNR over [0, 1] images and SSIM with the standard 11 x 11 Gaussian
window (sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1) over the valid (unpadded) region.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def as_float64(fn: str, name: str, value: object) -> np.ndarray:
    """``value`` (a torch tensor or numeric numpy array) as a float64 numpy array of the same
    shape; TypeError / ValueError naming ``fn`` and ``name`` when it is neither or not finite."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().numpy()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number):
            raise TypeError(f"{fn}(): {name} must be numeric, got dtype {value.dtype}")
        value = value.astype(np.float64)
    else:
        raise TypeError(f"{fn}(): {name} must be a torch.Tensor or numpy array, got "
                        f"{type(value).__name__}")
    if not np.isfinite(value).all():
        raise ValueError(f"{fn}(): {name} contains NaN or inf")
    return value


def _gaussian_window() -> Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _ssim(x: Tensor, y: Tensor) -> Tensor:
    """(N,) mean SSIM of (N, C, H, W) float64 images in [0, 1] over the valid region."""
    n, c, h, w = x.shape
    g = _gaussian_window()

    def blur(image: Tensor) -> Tensor:  # separable 'valid' Gaussian filter, per channel
        flat = image.reshape(n * c, 1, h, w)
        flat = torch.nn.functional.conv2d(flat, g.view(1, 1, -1, 1))
        flat = torch.nn.functional.conv2d(flat, g.view(1, 1, 1, -1))
        return flat.reshape(n, c, *flat.shape[-2:])

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return ssim_map.mean(dim=(1, 2, 3))


def image_metrics(pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of images in [0, 1].

    pred, gt: (N, C, H, W) (torch or numpy; C = 3 for RGB), values in [0, 1], H, W >= 11.
    ``psnr``: mean over images of ``10 log10(1 / MSE)`` (MSE over channels and pixels; inf
    when an image is identical). ``ssim``: mean over images of the mean SSIM over channels and
    the valid region (pixels whose 11 x 11 window lies inside the image), Gaussian window sigma
    1.5, C1 = 0.01^2, C2 = 0.03^2 (Wang et al. 2004; scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False, data_range=1)``).
    """
    pred = as_float64("image_metrics", "pred", pred)
    gt = as_float64("image_metrics", "gt", gt)
    if pred.ndim != 4 or pred.shape[0] == 0:
        raise ValueError(f"image_metrics(): pred must be (N > 0, C, H, W), got {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"image_metrics(): gt must have pred's shape {pred.shape}, got "
                         f"{gt.shape}")
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"image_metrics(): images must be at least {SSIM_WINDOW} x "
                         f"{SSIM_WINDOW} pixels for SSIM, got {pred.shape[-2:]}")
    for name, image in (("pred", pred), ("gt", gt)):
        if image.min() < 0 or image.max() > 1:
            raise ValueError(f"image_metrics(): {name} must lie in [0, 1] (got values in "
                             f"[{image.min():.4g}, {image.max():.4g}]); convert uint8 images "
                             "with / 255 and clamp decoded images to [0, 1]")
    x, y = torch.from_numpy(pred), torch.from_numpy(gt)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(1.0 / mse.numpy())
    return {"psnr": float(psnr.mean()), "ssim": float(_ssim(x, y).mean())}
