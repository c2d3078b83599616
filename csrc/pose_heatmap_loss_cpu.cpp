// CPU (OpenMP via at::parallel_for) kernels of drpose.ops.pose_heatmap_loss. The per-pixel maths
// (target, loss, derivatives) is in pose_heatmap_loss_math.h, shared with the CUDA kernel; this
// file walks the maps and rows.
//
// One template, map_kernel<..., kLoss, kGrad, kKeypoints>, serves the three entries; for map m
// with per-map scale c[m]:
//   forward       kLoss:          sums[m] = c[m] * sum_{y,x} f           (c = weight)
//   backward      kGrad:          grad[m] = c[m] * df/dz                 (c = upstream * weight)
//   forward_grad  kLoss + kGrad:  both from one read of the logits       (c = weight)
// and kKeypoints adds grad_keypoints[m] = c[m] / sigma^2 * sum df/dt t ((x - kx), (y - ky)).
// The target is separable, t = gx[x] gy[y]: gx is computed once per map and gy once per row, so
// a pixel costs one multiply for its target. The keypoint sums are formed per row,
// sum_x df/dt gx (x - kx) and sum_x df/dt gx, then weighted by gy and gy (y - ky). Pixel sums of a
// row are accumulated in acc_t (vectorised), the rows of a map in double. The map loop is in
// pose_heatmap_loss_cpu_maps.inc, compiled for the build's instruction set and, in a portable
// x86 build, for AVX2 + FMA and AVX-512 too (the widest the CPU has is chosen at run time).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "ops.h"
#include "pose_heatmap_loss_math.h"

// GCC on x86 without AVX2 in its target (a portable build) also compiles the map loop for AVX2 +
// FMA and for AVX-512 and picks the widest the CPU has at run time (below).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX2__)
#define DRPOSE_ISA_DISPATCH 1
#else
#define DRPOSE_ISA_DISPATCH 0
#endif

namespace drpose {
namespace {

using heatmap::Loss;

#define DRPOSE_ISA baseline
#include "pose_heatmap_loss_cpu_maps.inc"
#undef DRPOSE_ISA

// The instruction sets a map loop is compiled for, narrowest first.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"baseline", "avx2", "avx512"};

#if DRPOSE_ISA_DISPATCH
// The same loop for AVX2 + FMA (8 floats per register, fused multiply-adds) and for AVX-512
// (16 floats per register: the kernel 1.9x faster than with AVX2 on the README's machine),
// run on CPUs that have them; a build for such a CPU (-march=native, DRPOSE_NATIVE=1) has no
// need of them.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define DRPOSE_ISA avx2
#include "pose_heatmap_loss_cpu_maps.inc"
#undef DRPOSE_ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")
#define DRPOSE_ISA avx512
#include "pose_heatmap_loss_cpu_maps.inc"
#undef DRPOSE_ISA
#pragma GCC pop_options

Isa cpu_isa() {
  static const Isa isa = [] {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  return isa;
}

// The widest instruction set the map loop may use, lowered by pose_heatmap_loss_cpu_isa() (the
// tests run every loop the CPU has against the reference).
std::atomic<int> isa_ceiling{static_cast<int>(Isa::kAvx512)};

Isa chosen_isa() {
  return static_cast<Isa>(
      std::min(static_cast<int>(cpu_isa()), isa_ceiling.load(std::memory_order_relaxed)));
}
#endif

// The maps split over the threads; float maps take the widest loop the CPU has.
template <typename scalar_t, typename acc_t, Loss L, bool kLoss, bool kGrad, bool kKeypoints>
void map_kernel(const scalar_t* logits, const acc_t* keypoints, const acc_t* scale, int64_t maps,
                int64_t H, int64_t W, acc_t sigma, acc_t* sums, scalar_t* grad_logits,
                acc_t* grad_keypoints) {
  static_assert(kLoss || kGrad, "map_kernel computes the loss, its gradient or both");
  static_assert(kGrad || !kKeypoints, "keypoint gradients come with the logits' gradient");
  auto range = &baseline::map_range<scalar_t, acc_t, L, kLoss, kGrad, kKeypoints>;
#if DRPOSE_ISA_DISPATCH
  if constexpr (std::is_same_v<scalar_t, float>) {
    switch (chosen_isa()) {
      case Isa::kAvx512:
        range = &avx512::map_range<scalar_t, acc_t, L, kLoss, kGrad, kKeypoints>;
        break;
      case Isa::kAvx2:
        range = &avx2::map_range<scalar_t, acc_t, L, kLoss, kGrad, kKeypoints>;
        break;
      case Isa::kBaseline:
        break;
    }
  }
#endif
  at::parallel_for(0, maps, 1, [&](int64_t begin, int64_t end) {
    range(begin, end, logits, keypoints, scale, H, W, sigma, sums, grad_logits, grad_keypoints);
  });
}

// Asks Linux to back a large fresh output with 2 MB pages before the kernel first writes it: the
// first writes then fault once per 2 MB instead of once per 4 KB. At 256^2 maps the one-pass
// kernel's gradient is 72 MB and its first touch costs more than the maths (README). Only whole
// 2 MB pages inside the tensor are advised; no value or size changes, and a refusal (THP off,
// not Linux) changes nothing.
void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const auto begin = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + out.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)out;
#endif
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

// Runs map_kernel<kLoss, kGrad, keypoints_grad> for logits' dtype and the loss code (0 = bce,
// 1 = mse); the pointers not asked for may be undefined tensors.
template <bool kLoss, bool kGrad>
void run(const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& scale,
         double sigma, int64_t loss, bool keypoints_grad, const at::Tensor& sums,
         const at::Tensor& grad_logits, const at::Tensor& grad_keypoints) {
  TORCH_CHECK(loss == 0 || loss == 1, "pose_heatmap_loss (cpu): loss must be 0 (bce) or 1 (mse)");
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "pose_heatmap_loss_cpu", [&] {
        using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
        auto launch = [&](auto loss_tag, auto keypoints_tag) {
          map_kernel<scalar_t, acc_t, decltype(loss_tag)::value, kLoss, kGrad,
                     decltype(keypoints_tag)::value>(
              logits.data_ptr<scalar_t>(), keypoints.data_ptr<acc_t>(), scale.data_ptr<acc_t>(),
              logits.size(0), logits.size(1), logits.size(2), static_cast<acc_t>(sigma),
              kLoss ? sums.data_ptr<acc_t>() : nullptr,
              kGrad ? grad_logits.data_ptr<scalar_t>() : nullptr,
              kGrad && keypoints_grad ? grad_keypoints.data_ptr<acc_t>() : nullptr);
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

at::Tensor pose_heatmap_loss_forward_cpu(const at::Tensor& logits, const at::Tensor& keypoints,
                                         const at::Tensor& weight, double sigma, int64_t loss) {
  check_inputs(logits, keypoints, weight, "weight");
  at::Tensor sums = at::empty({logits.size(0)}, weight.options());
  run<true, false>(logits, keypoints, weight, sigma, loss, false, sums, {}, {});
  return sums;
}

std::tuple<at::Tensor, at::Tensor> pose_heatmap_loss_backward_cpu(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& coeff, double sigma,
    int64_t loss, bool keypoints_grad) {
  check_inputs(logits, keypoints, coeff, "coeff");
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  at::Tensor grad_keypoints = keypoint_grad_like(keypoints, keypoints_grad);
  run<false, true>(logits, keypoints, coeff, sigma, loss, keypoints_grad, {}, grad_logits,
                   grad_keypoints);
  return {grad_logits, grad_keypoints};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pose_heatmap_loss_forward_grad_cpu(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& weight, double sigma,
    int64_t loss, bool keypoints_grad) {
  check_inputs(logits, keypoints, weight, "weight");
  at::Tensor sums = at::empty({logits.size(0)}, weight.options());
  at::Tensor grad_logits = at::empty_like(logits);
  advise_huge_pages(grad_logits);
  at::Tensor grad_keypoints = keypoint_grad_like(keypoints, keypoints_grad);
  run<true, true>(logits, keypoints, weight, sigma, loss, keypoints_grad, sums, grad_logits,
                  grad_keypoints);
  return {sums, grad_logits, grad_keypoints};
}

std::string pose_heatmap_loss_cpu_isa(const std::string& choice) {
  if (!choice.empty()) {
    const auto* names = std::begin(kIsaNames);
    const auto* found = choice == "auto" ? std::end(kIsaNames) - 1
                                         : std::find(names, std::end(kIsaNames), choice);
    TORCH_CHECK(found != std::end(kIsaNames),
                "pose_heatmap_loss_cpu_isa: choice must be '', 'auto', 'avx512', 'avx2' or "
                "'baseline', not '", choice, "'");
#if DRPOSE_ISA_DISPATCH
    isa_ceiling = static_cast<int>(found - names);
#endif
  }
#if DRPOSE_ISA_DISPATCH
  return kIsaNames[static_cast<int>(chosen_isa())];
#else
  return "build";  // one loop, compiled for the build's target
#endif
}

}  // namespace drpose
