// CUDA kernels of drpose.ops.pose_heatmap_loss: forward, backward and the one-pass forward_grad,
// with the entry points and contracts of csrc/pose_heatmap_loss_cpu.cpp. The per-pixel maths
// (target factors, loss, derivatives) is csrc/pose_heatmap_loss_math.h, the code the CPU kernel
// runs; this file only indexes and launches.
//
// One block per map (grid-stride over maps), its threads stride over the map's pixels. The
// separable target's factors gx (W) and gy (H) come from the same gaussian_factor() calls as on
// the CPU, computed once per map into shared memory (when H + W fit in 48 KB; else per pixel), so
// a pixel costs one multiply for its target t = gx[x] gy[y], then pixel_terms(). Loss and
// keypoint sums are accumulated per thread in double, reduced over the
// warp (shuffles) and the block (shared memory), and written once per map: no atomics, so the
// result does not depend on scheduling. Indices are int64 (M * H * W may exceed 2^31).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <type_traits>

#include "ops.h"
#include "pose_heatmap_loss_math.h"

namespace drpose {
namespace {

using heatmap::Loss;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ inline double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block; the result is valid in thread 0. `shared` holds kWarps doubles.
__device__ inline double block_sum(double v, double* shared) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? shared[threadIdx.x] : 0.0;
  return warp == 0 ? warp_sum(v) : 0.0;
}

// Shared-memory size in bytes of a map's target profile (gx, gy), 0 when H + W do not fit in the
// 48 KB a block gets without opting in (the kernel then computes the factors per pixel).
__host__ __device__ inline int64_t profile_bytes_for(int64_t H, int64_t W, int64_t size) {
  const int64_t bytes = (H + W) * size;
  return bytes <= 48 * 1024 - kWarps * 8 ? bytes : 0;
}

template <typename scalar_t, typename acc_t, Loss L, bool kLoss, bool kGrad, bool kKeypoints>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const scalar_t* __restrict__ logits, const acc_t* __restrict__ keypoints,
               const acc_t* __restrict__ scale, int64_t maps, int64_t H, int64_t W, acc_t sigma,
               acc_t* __restrict__ sums, scalar_t* __restrict__ grad_logits,
               acc_t* __restrict__ grad_keypoints) {
  static_assert(kLoss || kGrad, "map_kernel computes the loss, its gradient or both");
  static_assert(kGrad || !kKeypoints, "keypoint gradients come with the logits' gradient");
  __shared__ double shared[kWarps];
  extern __shared__ __align__(16) unsigned char profile_bytes[];
  acc_t* profile = reinterpret_cast<acc_t*>(profile_bytes);  // gx (W) then gy (H), or unused
  const bool use_profile = profile_bytes_for(H, W, sizeof(acc_t)) > 0;
  const acc_t inv_sigma2 = acc_t(1) / (sigma * sigma);
  const acc_t inv_two_sigma2 = acc_t(0.5) * inv_sigma2;
  const int64_t pixels = H * W;
  for (int64_t m = blockIdx.x; m < maps; m += gridDim.x) {
    const acc_t c = scale[m];
    const scalar_t* map = logits + m * pixels;
    scalar_t* grad_map = kGrad ? grad_logits + m * pixels : nullptr;
    if (c == acc_t(0)) {  // block-uniform branch
      if constexpr (kGrad)
        for (int64_t i = threadIdx.x; i < pixels; i += blockDim.x) grad_map[i] = scalar_t(0);
      if (threadIdx.x == 0) {
        if constexpr (kLoss) sums[m] = acc_t(0);
        if constexpr (kKeypoints) grad_keypoints[2 * m] = grad_keypoints[2 * m + 1] = acc_t(0);
      }
      continue;
    }
    const acc_t kx = keypoints[2 * m], ky = keypoints[2 * m + 1];
    if (use_profile) {
      __syncthreads();  // the previous map's profile is no longer read
      for (int64_t i = threadIdx.x; i < W + H; i += blockDim.x)
        profile[i] = i < W ? heatmap::gaussian_factor(static_cast<acc_t>(i), kx, inv_two_sigma2)
                           : heatmap::gaussian_factor(static_cast<acc_t>(i - W), ky,
                                                      inv_two_sigma2);
      __syncthreads();
    }
    double total = 0.0, sum_x = 0.0, sum_y = 0.0;
    for (int64_t i = threadIdx.x; i < pixels; i += blockDim.x) {
      const int64_t y = i / W, x = i % W;
      const acc_t tx = use_profile
                           ? profile[x]
                           : heatmap::gaussian_factor(static_cast<acc_t>(x), kx, inv_two_sigma2);
      const acc_t ty = use_profile
                           ? profile[W + y]
                           : heatmap::gaussian_factor(static_cast<acc_t>(y), ky, inv_two_sigma2);
      const auto p = heatmap::pixel_terms<L>(static_cast<acc_t>(map[i]), ty * tx);
      if constexpr (kLoss) total += static_cast<double>(p.value);
      if constexpr (kGrad) grad_map[i] = static_cast<scalar_t>(c * p.d_logit);
      if constexpr (kKeypoints) {
        const double g = static_cast<double>(p.d_target * tx) * static_cast<double>(ty);
        sum_x += g * (static_cast<double>(x) - static_cast<double>(kx));
        sum_y += g * (static_cast<double>(y) - static_cast<double>(ky));
      }
    }
    if constexpr (kLoss) {
      total = block_sum(total, shared);
      if (threadIdx.x == 0) sums[m] = static_cast<acc_t>(total) * c;
    }
    if constexpr (kKeypoints) {
      sum_x = block_sum(sum_x, shared);
      sum_y = block_sum(sum_y, shared);
      if (threadIdx.x == 0) {
        grad_keypoints[2 * m] = static_cast<acc_t>(sum_x) * inv_sigma2 * c;
        grad_keypoints[2 * m + 1] = static_cast<acc_t>(sum_y) * inv_sigma2 * c;
      }
    }
  }
}

void check_inputs(const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& per_map,
                  const char* per_map_name) {
  TORCH_CHECK(logits.is_cuda() && keypoints.device() == logits.device() &&
                  per_map.device() == logits.device(),
              "pose_heatmap_loss (cuda): all inputs must be CUDA tensors on one device");
  TORCH_CHECK(logits.dim() == 3 && logits.is_contiguous(),
              "pose_heatmap_loss (cuda): logits must be a contiguous (M, H, W) tensor");
  const int64_t maps = logits.size(0);
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(keypoints.sizes() == at::IntArrayRef({maps, 2}) && keypoints.is_contiguous() &&
                  keypoints.scalar_type() == acc,
              "pose_heatmap_loss (cuda): keypoints must be contiguous (M, 2) of the "
              "accumulation dtype");
  TORCH_CHECK(per_map.sizes() == at::IntArrayRef({maps}) && per_map.is_contiguous() &&
                  per_map.scalar_type() == acc,
              "pose_heatmap_loss (cuda): ", per_map_name,
              " must be contiguous (M,) of the accumulation dtype");
}

template <bool kLoss, bool kGrad>
void run(const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& scale,
         double sigma, int64_t loss, bool keypoints_grad, const at::Tensor& sums,
         const at::Tensor& grad_logits, const at::Tensor& grad_keypoints) {
  TORCH_CHECK(loss == 0 || loss == 1,
              "pose_heatmap_loss (cuda): loss must be 0 (bce) or 1 (mse)");
  const int64_t maps = logits.size(0);
  if (maps == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int blocks = static_cast<int>(std::min<int64_t>(maps, sms * 64));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pose_heatmap_loss_cuda", [&] {
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        const int64_t profile = profile_bytes_for(logits.size(1), logits.size(2), sizeof(acc_t));
        auto launch = [&](auto loss_tag, auto keypoints_tag) {
          map_kernel<scalar_t, acc_t, decltype(loss_tag)::value, kLoss, kGrad,
                     decltype(keypoints_tag)::value>
              <<<blocks, kThreads, profile, stream>>>(
              logits.data_ptr<scalar_t>(), keypoints.data_ptr<acc_t>(), scale.data_ptr<acc_t>(),
              maps, logits.size(1), logits.size(2), static_cast<acc_t>(sigma),
              kLoss ? sums.data_ptr<acc_t>() : nullptr,
              kGrad ? grad_logits.data_ptr<scalar_t>() : nullptr,
              kGrad && keypoints_grad ? grad_keypoints.data_ptr<acc_t>() : nullptr);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        using Bce = std::integral_constant<Loss, Loss::kBce>;
        using Mse = std::integral_constant<Loss, Loss::kMse>;
        if (kGrad && keypoints_grad) {
          loss == 0 ? launch(Bce{}, std::bool_constant<kGrad>{})
                    : launch(Mse{}, std::bool_constant<kGrad>{});
        } else {
          loss == 0 ? launch(Bce{}, std::false_type{}) : launch(Mse{}, std::false_type{});
        }
      });
}

at::Tensor keypoint_grad_like(const at::Tensor& keypoints, bool keypoints_grad) {
  return keypoints_grad ? at::empty_like(keypoints) : at::empty({0, 2}, keypoints.options());
}

}  // namespace

at::Tensor pose_heatmap_loss_forward_cuda(const at::Tensor& logits, const at::Tensor& keypoints,
                                          const at::Tensor& weight, double sigma, int64_t loss) {
  check_inputs(logits, keypoints, weight, "weight");
  at::Tensor sums = at::empty({logits.size(0)}, weight.options());
  run<true, false>(logits, keypoints, weight, sigma, loss, false, sums, {}, {});
  return sums;
}

std::tuple<at::Tensor, at::Tensor> pose_heatmap_loss_backward_cuda(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& coeff, double sigma,
    int64_t loss, bool keypoints_grad) {
  check_inputs(logits, keypoints, coeff, "coeff");
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor grad_keypoints = keypoint_grad_like(keypoints, keypoints_grad);
  run<false, true>(logits, keypoints, coeff, sigma, loss, keypoints_grad, {}, grad_logits,
                   grad_keypoints);
  return {grad_logits, grad_keypoints};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pose_heatmap_loss_forward_grad_cuda(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& weight, double sigma,
    int64_t loss, bool keypoints_grad) {
  check_inputs(logits, keypoints, weight, "weight");
  at::Tensor sums = at::empty({logits.size(0)}, weight.options());
  at::Tensor grad_logits = at::empty_like(logits);
  at::Tensor grad_keypoints = keypoint_grad_like(keypoints, keypoints_grad);
  run<true, true>(logits, keypoints, weight, sigma, loss, keypoints_grad, sums, grad_logits,
                  grad_keypoints);
  return {sums, grad_logits, grad_keypoints};
}

}  // namespace drpose
