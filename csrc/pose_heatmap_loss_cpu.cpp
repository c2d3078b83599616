// CPU (OpenMP via at::parallel_for) kernels of drpose.ops.pose_heatmap_loss.
//
// For one map m with keypoint (kx, ky), logits z[y, x] and the never-materialised target
//   t[y, x] = exp(-((x - kx)^2 + (y - ky)^2) / (2 sigma^2)) = ex[x] * ey[y]   (separable),
// the forward returns  out[m] = weight[m] * sum_{y,x} f(z, t)  with
//   bce: f = max(z, 0) - z t + log1p(exp(-|z|))        mse: f = (z - t)^2
// and the backward, given coeff[m] = dL/dout[m] * weight[m], returns
//   dL/dz  = coeff * df/dz,    df/dz = sigmoid(z) - t  (bce)  |  2 (z - t)  (mse)
//   dL/dkx = coeff * sum df/dt * t * (x - kx) / sigma^2,   df/dt = -z (bce) | -2 (z - t) (mse)
//   dL/dky = coeff * sum df/dt * t * (y - ky) / sigma^2
// The per-pixel exp/log1p of the bce loss are the hot path: for float they use the branch-free
// approximations below, which the compiler vectorises (max error ~2 ulp); double uses libm.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops.h"

namespace drpose {
namespace {

enum class Loss : int64_t { kBce = 0, kMse = 1 };

// exp(x) for x <= 0 in float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7
// Taylor polynomial for e^r (truncation < 6e-9 relative) and 2^n built in the exponent bits.
// x < -87 is clamped (e^-87 ~ 1.6e-38, the smallest normal float is 1.2e-38).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
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
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(e) for e in [0, 1]: log(1 + e) = 2 atanh(s) with s = e / (2 + e) in [0, 1/3], computed
// without forming 1 + e (so tiny e keeps full precision); series to s^15 (error < 1e-8).
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

template <typename acc_t>
struct Math;

template <>
struct Math<float> {
  static float exp_neg_abs(float z) { return exp_nonpositive(-std::fabs(z)); }
  static float log1p_unit(float e) { return drpose::log1p_unit(e); }
};

template <>
struct Math<double> {
  static double exp_neg_abs(double z) { return std::exp(-std::fabs(z)); }
  static double log1p_unit(double e) { return std::log1p(e); }
};

// Pointwise loss f(z, t) and its partial derivatives.
template <typename acc_t, Loss L>
struct Pointwise {
  static acc_t value(acc_t z, acc_t t) {
    if constexpr (L == Loss::kBce) {
      const acc_t relu = z > acc_t(0) ? z : acc_t(0);
      return relu - z * t + Math<acc_t>::log1p_unit(Math<acc_t>::exp_neg_abs(z));
    } else {
      return (z - t) * (z - t);
    }
  }
  static acc_t d_logit(acc_t z, acc_t t) {
    if constexpr (L == Loss::kBce) {
      const acc_t e = Math<acc_t>::exp_neg_abs(z);
      const acc_t sigmoid = (z >= acc_t(0) ? acc_t(1) : e) / (acc_t(1) + e);
      return sigmoid - t;
    } else {
      return acc_t(2) * (z - t);
    }
  }
  static acc_t d_target(acc_t z, acc_t t) {
    if constexpr (L == Loss::kBce) {
      return -z;
    } else {
      return acc_t(-2) * (z - t);
    }
  }
};

// g[i] = exp(-(i - k)^2 / (2 sigma^2)) for i in [0, n): one factor of the separable target.
template <typename acc_t>
void gaussian_profile(acc_t k, acc_t inv_two_sigma2, int64_t n, acc_t* g) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d = static_cast<acc_t>(i) - k;
    g[i] = std::exp(-d * d * inv_two_sigma2);
  }
}

template <typename scalar_t, typename acc_t, Loss L>
void forward_kernel(const scalar_t* logits, const acc_t* keypoints, const acc_t* weight,
                    int64_t maps, int64_t H, int64_t W, acc_t sigma, acc_t* out) {
  const acc_t inv_two_sigma2 = acc_t(1) / (acc_t(2) * sigma * sigma);
  at::parallel_for(0, maps, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ex(W), ey(H);
    for (int64_t m = begin; m < end; ++m) {
      if (weight[m] == acc_t(0)) {
        out[m] = acc_t(0);
        continue;
      }
      gaussian_profile(keypoints[2 * m], inv_two_sigma2, W, ex.data());
      gaussian_profile(keypoints[2 * m + 1], inv_two_sigma2, H, ey.data());
      const scalar_t* map = logits + m * H * W;
      double total = 0.0;
      for (int64_t y = 0; y < H; ++y) {
        const scalar_t* row = map + y * W;
        const acc_t ty = ey[y];
        acc_t row_sum = acc_t(0);
#pragma omp simd reduction(+ : row_sum)
        for (int64_t x = 0; x < W; ++x) {
          row_sum += Pointwise<acc_t, L>::value(static_cast<acc_t>(row[x]), ty * ex[x]);
        }
        total += static_cast<double>(row_sum);
      }
      out[m] = static_cast<acc_t>(total) * weight[m];
    }
  });
}

template <typename scalar_t, typename acc_t, Loss L>
void backward_kernel(const scalar_t* logits, const acc_t* keypoints, const acc_t* coeff,
                     int64_t maps, int64_t H, int64_t W, acc_t sigma, bool keypoints_grad,
                     scalar_t* grad_logits, acc_t* grad_keypoints) {
  const acc_t inv_sigma2 = acc_t(1) / (sigma * sigma);
  const acc_t inv_two_sigma2 = acc_t(0.5) * inv_sigma2;
  at::parallel_for(0, maps, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ex(W), ey(H), dx(W);
    for (int64_t m = begin; m < end; ++m) {
      scalar_t* grad_map = grad_logits + m * H * W;
      const acc_t c = coeff[m];
      if (c == acc_t(0)) {
        std::fill(grad_map, grad_map + H * W, scalar_t(0));
        if (keypoints_grad) grad_keypoints[2 * m] = grad_keypoints[2 * m + 1] = acc_t(0);
        continue;
      }
      const acc_t kx = keypoints[2 * m], ky = keypoints[2 * m + 1];
      gaussian_profile(kx, inv_two_sigma2, W, ex.data());
      gaussian_profile(ky, inv_two_sigma2, H, ey.data());
      for (int64_t x = 0; x < W; ++x) dx[x] = static_cast<acc_t>(x) - kx;
      const scalar_t* map = logits + m * H * W;
      double sum_x = 0.0, sum_y = 0.0;  // sum df/dt * t * (x - kx), sum df/dt * t * (y - ky)
      for (int64_t y = 0; y < H; ++y) {
        const scalar_t* row = map + y * W;
        scalar_t* grad_row = grad_map + y * W;
        const acc_t ty = ey[y];
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) {
          const acc_t z = static_cast<acc_t>(row[x]);
          grad_row[x] = static_cast<scalar_t>(c * Pointwise<acc_t, L>::d_logit(z, ty * ex[x]));
        }
        if (!keypoints_grad) continue;
        acc_t row_x = acc_t(0), row_y = acc_t(0);
#pragma omp simd reduction(+ : row_x, row_y)
        for (int64_t x = 0; x < W; ++x) {
          const acc_t z = static_cast<acc_t>(row[x]);
          const acc_t tx = ex[x];
          const acc_t g = Pointwise<acc_t, L>::d_target(z, ty * tx) * tx;
          row_x += g * dx[x];
          row_y += g;
        }
        sum_x += static_cast<double>(ty) * row_x;
        sum_y += static_cast<double>(ty) * (static_cast<double>(y) - ky) * row_y;
      }
      if (keypoints_grad) {
        grad_keypoints[2 * m] = static_cast<acc_t>(sum_x) * inv_sigma2 * c;
        grad_keypoints[2 * m + 1] = static_cast<acc_t>(sum_y) * inv_sigma2 * c;
      }
    }
  });
}

void check_inputs(const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& per_map,
                  const char* per_map_name) {
  TORCH_CHECK(logits.device().is_cpu() && keypoints.device().is_cpu() &&
                  per_map.device().is_cpu(),
              "pose_heatmap_loss (cpu): all inputs must be CPU tensors");
  TORCH_CHECK(logits.dim() == 3 && logits.is_contiguous(),
              "pose_heatmap_loss (cpu): logits must be a contiguous (M, H, W) tensor");
  const int64_t maps = logits.size(0);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(keypoints.sizes() == at::IntArrayRef({maps, 2}) && keypoints.is_contiguous() &&
                  keypoints.scalar_type() == acc,
              "pose_heatmap_loss (cpu): keypoints must be contiguous (M, 2) of the accumulation "
              "dtype");
  TORCH_CHECK(per_map.sizes() == at::IntArrayRef({maps}) && per_map.is_contiguous() &&
                  per_map.scalar_type() == acc,
              "pose_heatmap_loss (cpu): ", per_map_name,
              " must be contiguous (M,) of the accumulation dtype");
}

template <typename Fn>
void with_loss(int64_t loss, Fn&& fn) {
  TORCH_CHECK(loss == 0 || loss == 1, "pose_heatmap_loss (cpu): loss must be 0 (bce) or 1 (mse)");
  if (loss == 0) {
    fn(std::integral_constant<Loss, Loss::kBce>{});
  } else {
    fn(std::integral_constant<Loss, Loss::kMse>{});
  }
}

}  // namespace

at::Tensor pose_heatmap_loss_forward_cpu(const at::Tensor& logits, const at::Tensor& keypoints,
                                         const at::Tensor& weight, double sigma, int64_t loss) {
  check_inputs(logits, keypoints, weight, "weight");
  at::Tensor out = at::empty({logits.size(0)}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pose_heatmap_loss_forward_cpu", [&] {
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        with_loss(loss, [&](auto L) {
          forward_kernel<scalar_t, acc_t, decltype(L)::value>(
              logits.data_ptr<scalar_t>(), keypoints.data_ptr<acc_t>(), weight.data_ptr<acc_t>(),
              logits.size(0), logits.size(1), logits.size(2), static_cast<acc_t>(sigma),
              out.data_ptr<acc_t>());
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pose_heatmap_loss_backward_cpu(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& coeff, double sigma,
    int64_t loss, bool keypoints_grad) {
  check_inputs(logits, keypoints, coeff, "coeff");
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor grad_keypoints =
      keypoints_grad ? at::empty_like(keypoints) : at::zeros({0, 2}, keypoints.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pose_heatmap_loss_backward_cpu", [&] {
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        with_loss(loss, [&](auto L) {
          backward_kernel<scalar_t, acc_t, decltype(L)::value>(
              logits.data_ptr<scalar_t>(), keypoints.data_ptr<acc_t>(), coeff.data_ptr<acc_t>(),
              logits.size(0), logits.size(1), logits.size(2), static_cast<acc_t>(sigma),
              keypoints_grad, grad_logits.data_ptr<scalar_t>(),
              keypoints_grad ? grad_keypoints.data_ptr<acc_t>() : nullptr);
        });
      });
  return {grad_logits, grad_keypoints};
}

}  // namespace drpose
