// Declarations of every kernel entry point of drpose._C. The kernels themselves live in one file
// per op (<op>_cpu.cpp, <op>_cuda.cu); bindings.cpp exposes them to Python. Shapes and dtypes are
// validated in Python (drpose/ops/<op>.py); these functions only check what memory safety needs.
#pragma once

#include <torch/extension.h>

#include <string>
#include <tuple>

namespace drpose {

// pose_heatmap_loss: per-map weighted loss sums and their gradients; see
// drpose/ops/pose_heatmap_loss.py for the maths. loss: 0 = bce, 1 = mse.
at::Tensor pose_heatmap_loss_forward_cpu(const at::Tensor& logits,     // (M, H, W)
                                         const at::Tensor& keypoints,  // (M, 2)
                                         const at::Tensor& weight,     // (M,)
                                         double sigma, int64_t loss);
std::tuple<at::Tensor, at::Tensor> pose_heatmap_loss_backward_cpu(
    const at::Tensor& logits, const at::Tensor& keypoints,
    const at::Tensor& coeff,  // (M,) upstream gradient times weight
    double sigma, int64_t loss, bool keypoints_grad);
// One pass: (sums (M,), grad_logits (M, H, W) = weight * df/dz in logits' dtype, grad_keypoints
// (M, 2) = weight * df/dk, or (0, 2) when keypoints_grad is false).
std::tuple<at::Tensor, at::Tensor, at::Tensor> pose_heatmap_loss_forward_grad_cpu(
    const at::Tensor& logits, const at::Tensor& keypoints,
    const at::Tensor& weight,  // (M,)
    double sigma, int64_t loss, bool keypoints_grad);
// The instruction set of the CPU map loop for float logits in a portable x86 build: "avx512",
// "avx2" (+ FMA) or "baseline" (the build's target), the widest the CPU has at or below the
// ceiling that `choice` sets ("auto" = the widest; "" asks only). "build" when the build has one
// loop for its own target (e.g. DRPOSE_NATIVE=1).
std::string pose_heatmap_loss_cpu_isa(const std::string& choice);

// rasterize / interpolate: nvdiffrast's contract; see csrc/rasterize_math.h (the maths, shared
// by the CPU and CUDA kernels) and drpose/ops/rasterize.py. pos (N, V, 4) clip space, tri (T, 3)
// int32 -> rast (N, H, W, 4); attr (N | 1, V, A) -> (N, H, W, A).
at::Tensor rasterize_forward_cpu(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                 int64_t width);
at::Tensor rasterize_backward_cpu(const at::Tensor& grad_rast, const at::Tensor& pos,
                                  const at::Tensor& tri, const at::Tensor& rast);
at::Tensor interpolate_forward_cpu(const at::Tensor& attr, const at::Tensor& rast,
                                   const at::Tensor& tri);
std::tuple<at::Tensor, at::Tensor> interpolate_backward_cpu(const at::Tensor& grad_out,
                                                            const at::Tensor& attr,
                                                            const at::Tensor& rast,
                                                            const at::Tensor& tri);

#ifdef DRPOSE_WITH_CUDA
// The same entry points for CUDA tensors (csrc/pose_heatmap_loss_cuda.cu,
// csrc/rasterize_cuda.cu).
at::Tensor pose_heatmap_loss_forward_cuda(const at::Tensor& logits, const at::Tensor& keypoints,
                                          const at::Tensor& weight, double sigma, int64_t loss);
std::tuple<at::Tensor, at::Tensor> pose_heatmap_loss_backward_cuda(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& coeff, double sigma,
    int64_t loss, bool keypoints_grad);
std::tuple<at::Tensor, at::Tensor, at::Tensor> pose_heatmap_loss_forward_grad_cuda(
    const at::Tensor& logits, const at::Tensor& keypoints, const at::Tensor& weight, double sigma,
    int64_t loss, bool keypoints_grad);
at::Tensor rasterize_forward_cuda(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                  int64_t width);
at::Tensor rasterize_backward_cuda(const at::Tensor& grad_rast, const at::Tensor& pos,
                                   const at::Tensor& tri, const at::Tensor& rast);
at::Tensor interpolate_forward_cuda(const at::Tensor& attr, const at::Tensor& rast,
                                    const at::Tensor& tri);
std::tuple<at::Tensor, at::Tensor> interpolate_backward_cuda(const at::Tensor& grad_out,
                                                             const at::Tensor& attr,
                                                             const at::Tensor& rast,
                                                             const at::Tensor& tri);
#endif

}  // namespace drpose
