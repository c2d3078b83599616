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
// float: exp and log1p are branch-free polynomials (max error ~2 ulp, and 3 ulp for the bce
// value), so the CPU compiler vectorises the pixel loop and a GPU runs no libm call; one division
// per pixel gives both 1 / (1 + e) and e / (2 + e). double: libm's exp and log1p.
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

// exp(x) for x <= 0 in float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7
// Taylor polynomial for e^r (truncation < 6e-9 relative) and 2^n built in the exponent bits.
// x < -87 is clamped (e^-87 ~ 1.6e-38, the smallest normal float is 1.2e-38).
DRPOSE_HD inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
#if defined(__CUDA_ARCH__)
  const float scale = __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
#endif
  return p * scale;
}

DRPOSE_HD inline double exp_nonpositive(double x) { return ::exp(x); }

// log(1 + e) and 1 / (1 + e) for e in [0, 1]. float: log(1 + e) = 2 atanh(s) with
// s = e / (2 + e) in [0, 1/3] (1 + e is never formed, so tiny e keeps full precision), series to
// s^15 (error < 1e-8); s and 1 / (1 + e) come from the one reciprocal q = 1 / ((1 + e)(2 + e)).
DRPOSE_HD inline void log1p_and_reciprocal(float e, float& log1p_e, float& inv_one_plus_e) {
  const float one_e = 1.0f + e;
  const float two_e = 2.0f + e;
  const float q = 1.0f / (one_e * two_e);
  inv_one_plus_e = q * two_e;
  const float s = e * one_e * q;
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  log1p_e = 2.0f * s * p;
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
    const acc_t e = exp_nonpositive(z < acc_t(0) ? z : -z);
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
