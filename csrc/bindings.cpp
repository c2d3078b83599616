// Thin Python bindings of drpose._C. The public op library (torch.library, namespace "drpose")
// is defined in drpose/ops/; it calls these entry points for backend="cpu" (and "cuda" when
// the build has CUDA: DRPOSE_WITH_CUDA).
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "drpose C++ (OpenMP) and CUDA kernels; use them through drpose.ops";
  m.def("pose_heatmap_loss_forward_cpu", &drpose::pose_heatmap_loss_forward_cpu);
  m.def("pose_heatmap_loss_backward_cpu", &drpose::pose_heatmap_loss_backward_cpu);
  m.def("pose_heatmap_loss_forward_grad_cpu", &drpose::pose_heatmap_loss_forward_grad_cpu);
  m.def("pose_heatmap_loss_cpu_isa", &drpose::pose_heatmap_loss_cpu_isa,
        pybind11::arg("choice") = "");
  m.def("rasterize_forward_cpu", &drpose::rasterize_forward_cpu);
  m.def("rasterize_backward_cpu", &drpose::rasterize_backward_cpu);
  m.def("interpolate_forward_cpu", &drpose::interpolate_forward_cpu);
  m.def("interpolate_backward_cpu", &drpose::interpolate_backward_cpu);
#ifdef DRPOSE_WITH_CUDA
  m.def("pose_heatmap_loss_forward_cuda", &drpose::pose_heatmap_loss_forward_cuda);
  m.def("pose_heatmap_loss_backward_cuda", &drpose::pose_heatmap_loss_backward_cuda);
  m.def("pose_heatmap_loss_forward_grad_cuda", &drpose::pose_heatmap_loss_forward_grad_cuda);
  m.def("rasterize_forward_cuda", &drpose::rasterize_forward_cuda);
  m.def("rasterize_backward_cuda", &drpose::rasterize_backward_cuda);
  m.def("interpolate_forward_cuda", &drpose::interpolate_forward_cuda);
  m.def("interpolate_backward_cuda", &drpose::interpolate_backward_cuda);
#endif
}
