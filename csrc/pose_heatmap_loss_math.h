// Per-pixel maths of drpose.ops.pose_heatmap_loss, shared by the C++ CPU kernel
// (pose_heatmap_loss_cpu.cpp) and the CUDA kernel: only indexing and launch differ between them.
// Every function is DRPOSE_HD (__host__ __device__ under nvcc, plain inline otherwise), so the
// CPU tests exercise the code a GPU runs.
//
// For one map with keypoint (kx, ky), Gaussian width sigma and logits z[y, x]:
//   target   t[y, x] = gx[x] * gy[y],   gx[x] = exp(-(x - kx)^2 / (2 sigma^2)) (gy alike, in y)
//   bce      f = max(z, 0) - z t + log1p(exp(-|z|))      df/dz = sigmoid(z) - t   df/dt = -z
//   mse      f = (z - t)^2                              df/dz = 2 (z - t)        df/dt = -2 (z - t)
//   keypoint df/dkx = df/dt * t * (x - kx) / sigma^2,   df/dky = df/dt * t * (y - ky) / sigma^2
// pixel_terms() gives f, df/dz and df/dt of one pixel from a single exp(-|z|) (bce), which the loss
// (log1p) and the sigmoid share.
//
// float: exp and log1p are branch-free minimax polynomials, so the CPU compiler vectorises the
// pixel loop and a GPU runs no libm call; one division per pixel gives both 1 / (1 + e) and
// e / (2 + e). double: libm's exp and log1p.
// Measured float errors against double over z in [-85, 85] (units of 2^-24): exp 1.6, log1p 5.4,
// 1 / (1 + e) 2.9 (relative); bce value 5.8 (relative to max(z, 0) + |z t| + log1p, the terms
// that cancel); df/dz 2.9 (absolute, |df/dz| <= 1). The Taylor polynomials these replaced (degree
// 7 for exp, the atanh series to s^15) measured the same, with 5 more multiply-adds per pixel.
// tools/fit_heatmap_polynomials.py refits the coefficients.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DRPOSE_HD __host__ __device__
#else
#define DRPOSE_HD
#endif

namespace drpose {
namespace heatmap {

enum class Loss : int64_t { kBce = 0, kMse = 1 };

// The bits of `from` read as a To of the same size (nvcc and GCC turn the copy into a register
// move).
template <typename To, typename From>
DRPOSE_HD inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

// exp(x) for x <= 0 in float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and
// e^r ~ 1 + r + r^2 P(r) with P of degree 4 fitted for the least maximum relative error on that
// interval (3.7e-9, below float's 6e-8 rounding; a Taylor polynomial needs degree 7 for it).
// 2^n is built in the exponent bits from the rounding itself: shifted = x log2(e) + 1.5 * 2^23
// holds n in its low mantissa bits, and bits(shifted) << 23 keeps exactly n << 23 (the bits of
// 1.5 * 2^23 = 0x4B400000 shift out), so no float-to-int conversion is needed.
// x < -87 is clamped (e^-87 ~ 1.6e-38, the smallest normal float is 1.2e-38).
DRPOSE_HD inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in two: 355/512 (9 bits), so n * it is exact
  r = r + n * 2.12194440e-4f;
  float p = 1.387969100e-03f;
  p = p * r + 8.368693314e-03f;
  p = p * r + 4.166722646e-02f;
  p = p * r + 1.666652087e-01f;
  p = p * r + 4.999999826e-01f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t exponent = bit_cast<uint32_t>(shifted) << 23;
  return p * bit_cast<float>(exponent + (127u << 23));
}

DRPOSE_HD inline double exp_nonpositive(double x) { return ::exp(x); }

// log(1 + e) and 1 / (1 + e) for e in [0, 1]. float: log(1 + e) = 2 atanh(s) with
// s = e / (2 + e) in [0, 1/3] (1 + e is never formed, so tiny e keeps full precision), and
// atanh(s) / s ~ 1 + w Q(w), w = s^2 in [0, 1/9], Q of degree 3 fitted for the least maximum
// relative error (4.5e-9; the atanh series needs terms to s^15 for it); the 2 is folded into the
// coefficients. s and 1 / (1 + e) come from the one reciprocal q = 1 / ((1 + e)(2 + e)).
DRPOSE_HD inline void log1p_and_reciprocal(float e, float& log1p_e, float& inv_one_plus_e) {
  const float one_e = 1.0f + e;
  const float two_e = 2.0f + e;
  const float q = 1.0f / (one_e * two_e);
  inv_one_plus_e = q * two_e;
  const float s = e * one_e * q;
  const float w = s * s;
  float p = 2.0f * 1.400585163e-01f;
  p = p * w + 2.0f * 1.400100863e-01f;
  p = p * w + 2.0f * 2.001074906e-01f;
  p = p * w + 2.0f * 3.333320867e-01f;
  p = p * w + 2.0f;
  log1p_e = s * p;
}

DRPOSE_HD inline void log1p_and_reciprocal(double e, double& log1p_e, double& inv_one_plus_e) {
  log1p_e = ::log1p(e);
  inv_one_plus_e = 1.0 / (1.0 + e);
}

// The smallest exponent a target factor keeps: below it the factor is flushed to 0 (float:
// e^-34.5 ~ 1e-15, double: e^-345 ~ 1e-150), so the target gx gy and the products formed with it
// stay clear of the subnormal range, where x86 takes a ~100-cycle microcode assist per operation
// (a tail clamped at e^-87 made every far pixel's product subnormal: the kernel ran 7x slower).
// The target moves by less than 1e-15 (float) / 1e-150 (double) per pixel.
DRPOSE_HD inline float gaussian_cutoff(float) { return -34.5f; }
DRPOSE_HD inline double gaussian_cutoff(double) { return -345.0; }

// One factor of the separable target: exp(-(i - k)^2 / (2 sigma^2)) at pixel index i, 0 below
// the cutoff.
template <typename acc_t>
DRPOSE_HD inline acc_t gaussian_factor(acc_t i, acc_t k, acc_t inv_two_sigma2) {
  const acc_t d = i - k;
  const acc_t a = -d * d * inv_two_sigma2;
  return a < gaussian_cutoff(a) ? acc_t(0) : exp_nonpositive(a);
}

template <typename acc_t>
struct PixelTerms {
  acc_t value;     // f(z, t)
  acc_t d_logit;   // df/dz
  acc_t d_target;  // df/dt
};

// f, df/dz and df/dt at logit z and target t (one exp(-|z|) for bce).
template <Loss L, typename acc_t>
DRPOSE_HD inline PixelTerms<acc_t> pixel_terms(acc_t z, acc_t t) {
  if constexpr (L == Loss::kBce) {
    const acc_t e = exp_nonpositive(-std::fabs(z));  // one sign-bit operation
    acc_t log1p_e, inv;
    log1p_and_reciprocal(e, log1p_e, inv);
    const acc_t relu = z > acc_t(0) ? z : acc_t(0);
    const acc_t sigmoid = (z >= acc_t(0) ? acc_t(1) : e) * inv;
    return {relu - z * t + log1p_e, sigmoid - t, -z};
  } else {
    const acc_t r = z - t;
    return {r * r, acc_t(2) * r, acc_t(-2) * r};
  }
}

}  // namespace heatmap
}  // namespace drpose
