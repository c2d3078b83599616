"""The float polynomials of csrc/pose_heatmap_loss_math.h, refitted.

``python tools/fit_heatmap_polynomials.py`` prints their coefficients (the header's, to 9 digits).

Both are fitted for the least maximum relative error (Lawson's iteratively reweighted least
squares on Chebyshev nodes, which converges to the minimax fit) and printed with that error:

    exp:   e^r ~ 1 + r + r^2 P(r),         r in [-ln2/2, ln2/2],  P of degree 4
    log1p: atanh(s) / s ~ 1 + w Q(w),      w = s^2 in [0, 1/9],   Q of degree 3
           (log(1 + e) = 2 atanh(e / (2 + e)), e in [0, 1])
"""

from __future__ import annotations

import numpy as np

NODES = 4001
ITERATIONS = 500


def fit_relative(x: np.ndarray, target: np.ndarray, fixed: np.ndarray, powers: range,
                 scale: np.ndarray) -> tuple[np.ndarray, float]:
    """Coefficients c of sum_k c_k x^k (k in powers) ~ target - fixed, minimising the maximum of
    |fixed + sum - target| / scale; returns (c, that maximum)."""
    basis = np.stack([x**k for k in powers], axis=1)
    weights = np.full_like(x, 1.0 / x.size)
    for _ in range(ITERATIONS):
        w = weights / scale
        coeffs, *_ = np.linalg.lstsq(basis * w[:, None], (target - fixed) * w, rcond=None)
        error = np.abs(fixed + basis @ coeffs - target) / scale
        weights = weights * (error + 1e-300)
        weights /= weights.sum()
    return coeffs, float(error.max())


def chebyshev_nodes(lo: float, hi: float) -> np.ndarray:
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.linspace(0.0, np.pi, NODES))


def fit_exp() -> tuple[np.ndarray, float]:
    """P (r^0 .. r^4) of e^r ~ 1 + r + r^2 P(r) on [-ln2/2, ln2/2], and its max relative error."""
    r = chebyshev_nodes(-np.log(2) / 2, np.log(2) / 2)
    exp_r = np.exp(r)
    return fit_relative(r, exp_r, 1 + r, range(2, 7), exp_r)


def fit_log1p() -> tuple[np.ndarray, float]:
    """Q (w^0 .. w^3) of atanh(s) / s ~ 1 + w Q(w), w = s^2 in [0, 1/9], and its max relative
    error."""
    w = chebyshev_nodes(0.0, 1 / 9)
    s = np.sqrt(w)
    ratio = np.where(s > 0, np.arctanh(s) / np.where(s > 0, s, 1.0), 1.0)
    return fit_relative(w, ratio, np.ones_like(w), range(1, 5), ratio)


def main() -> None:
    for name, fit in (("exp: P", fit_exp), ("log1p: Q", fit_log1p)):
        coeffs, error = fit()
        print(f"{name} = {', '.join(f'{c:.9e}' for c in coeffs)}; max rel error {error:.2e}")


if __name__ == "__main__":
    main()
