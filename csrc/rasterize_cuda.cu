// rasterize and interpolate with nvdiffrast's contract on CUDA. The maths is the one of the CPU
// kernels (csrc/rasterize_math.h, DRPOSE_HD functions); this file only indexes and launches.
//
// rasterize_forward_cuda, four launches (grid-stride loops, int64 indices):
//   1. setup: one thread per (image, triangle): edge coefficients and pixel box;
//   2. depth: one thread per (image, triangle) walks its box; every kept fragment does
//      atomicMin(depth_key) on its pixel (64-bit; the key's unsigned order is the depth order);
//   3. id: the same walk; a fragment whose key equals its pixel's minimum does atomicMin(id), so
//      at equal depth the lowest triangle id wins, as on the CPU (draw order, GL_LESS);
//   4. resolve: one thread per pixel re-shades its winning triangle (the same double maths, so
//      the same (u, v, z/w) as the CPU) and writes (u, v, z/w, id + 1).
//   A triangle crossing w = 0 has the whole image as its box: one thread walks every pixel
//   (correct, slow; nvdiffrast, preferred by backend="auto", clips such triangles instead).
// rasterize_backward_cuda: one thread per pixel, atomicAdd of its 3 vertices' gradients.
// interpolate_forward_cuda: one thread per (pixel, channel); interpolate_backward_cuda: one
//   thread per pixel, atomicAdd into a float (double for double attributes) gradient buffer.
// Inputs are validated in drpose/ops/rasterize.py (indices in range included); the kernels
// still skip triangles with out-of-range indices and ids outside [1, T], so they never read out
// of bounds.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <climits>

#include "ops.h"
#include "rasterize_math.h"

namespace drpose {
namespace {

using raster::Fragment;
using raster::TriangleSetup;

constexpr int kThreads = 256;

// Blocks of a grid-stride launch over n items: enough to fill the GPU, never more than needed.
int blocks_for(int64_t n) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return static_cast<int>(std::max<int64_t>(1, std::min((n + kThreads - 1) / kThreads, sms * 32)));
}

__device__ inline int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ inline int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename scalar_t>
__global__ void setup_kernel(const scalar_t* __restrict__ pos, const int32_t* __restrict__ tri,
                             int64_t batch, int64_t num_vertices, int64_t num_triangles,
                             int64_t height, int64_t width, TriangleSetup* __restrict__ setups) {
  for (int64_t i = first_index(); i < batch * num_triangles; i += grid_stride()) {
    const int64_t n = i / num_triangles, t = i % num_triangles;
    const int32_t* v = tri + 3 * t;
    if (!raster::valid_triangle(v, num_vertices)) {
      setups[i] = raster::empty_setup();
      continue;
    }
    const scalar_t* p = pos + n * num_vertices * 4;
    setups[i] = raster::setup_triangle(p + 4 * v[0], p + 4 * v[1], p + 4 * v[2], height, width);
  }
}

// Pass 2 (kIdPass false): atomicMin of the depth keys. Pass 3 (true): atomicMin of the triangle
// ids among the fragments at their pixel's minimum depth.
template <bool kIdPass>
__global__ void fragment_kernel(const TriangleSetup* __restrict__ setups, int64_t batch,
                                int64_t num_triangles, int64_t height, int64_t width,
                                unsigned long long* __restrict__ keys,
                                int32_t* __restrict__ ids) {
  for (int64_t i = first_index(); i < batch * num_triangles; i += grid_stride()) {
    const TriangleSetup s = setups[i];
    if (!raster::drawable(s)) continue;
    const int64_t n = i / num_triangles, t = i % num_triangles;
    unsigned long long* image_keys = keys + n * height * width;
    int32_t* image_ids = ids + n * height * width;
    for (int64_t r = s.row0; r <= s.row1; ++r) {
      const double py = raster::pixel_centre(r, height);
      for (int64_t c = s.col0; c <= s.col1; ++c) {
        Fragment f;
        if (!raster::shade(s, raster::pixel_centre(c, width), py, f)) continue;
        const unsigned long long key = raster::depth_key(f.depth);
        const int64_t pixel = r * width + c;
        if (!kIdPass) {
          atomicMin(image_keys + pixel, key);
        } else if (key == image_keys[pixel]) {
          atomicMin(image_ids + pixel, static_cast<int32_t>(t));
        }
      }
    }
  }
}

template <typename scalar_t>
__global__ void resolve_kernel(const TriangleSetup* __restrict__ setups,
                               const int32_t* __restrict__ ids, int64_t batch,
                               int64_t num_triangles, int64_t height, int64_t width,
                               scalar_t* __restrict__ out) {
  const int64_t pixels = height * width;
  for (int64_t i = first_index(); i < batch * pixels; i += grid_stride()) {
    const int32_t t = ids[i];
    if (t == INT_MAX) continue;  // background: out is zero-initialised
    const int64_t n = i / pixels, pixel = i % pixels;
    Fragment f;
    if (!raster::shade(setups[n * num_triangles + t], raster::pixel_centre(pixel % width, width),
                       raster::pixel_centre(pixel / width, height), f))
      continue;  // cannot happen: the same maths covered this pixel in pass 2
    scalar_t* o = out + 4 * i;
    o[0] = static_cast<scalar_t>(f.u);
    o[1] = static_cast<scalar_t>(f.v);
    o[2] = static_cast<scalar_t>(f.depth);
    o[3] = static_cast<scalar_t>(t + 1);
  }
}

template <typename scalar_t>
__global__ void rasterize_backward_kernel(const scalar_t* __restrict__ grad_rast,
                                          const scalar_t* __restrict__ pos,
                                          const int32_t* __restrict__ tri,
                                          const scalar_t* __restrict__ rast, int64_t batch,
                                          int64_t num_vertices, int64_t num_triangles,
                                          int64_t height, int64_t width,
                                          scalar_t* __restrict__ grad_pos) {
  const int64_t pixels = height * width;
  for (int64_t i = first_index(); i < batch * pixels; i += grid_stride()) {
    const int64_t t = raster::triangle_of(rast[4 * i + 3], num_triangles);
    const double gu = static_cast<double>(grad_rast[4 * i]);
    const double gv = static_cast<double>(grad_rast[4 * i + 1]);
    if (t < 0 || (gu == 0.0 && gv == 0.0)) continue;
    const int32_t* v = tri + 3 * t;
    if (!raster::valid_triangle(v, num_vertices)) continue;
    const int64_t n = i / pixels, pixel = i % pixels;
    const scalar_t* p = pos + n * num_vertices * 4;
    double x[3], y[3], w[3], gx[3], gy[3], gw[3];
    for (int k = 0; k < 3; ++k) {
      x[k] = static_cast<double>(p[4 * v[k]]);
      y[k] = static_cast<double>(p[4 * v[k] + 1]);
      w[k] = static_cast<double>(p[4 * v[k] + 3]);
    }
    raster::barycentric_backward(x, y, w, raster::pixel_centre(pixel % width, width),
                                 raster::pixel_centre(pixel / width, height), gu, gv, gx, gy, gw);
    scalar_t* g = grad_pos + n * num_vertices * 4;
    for (int k = 0; k < 3; ++k) {
      atomicAdd(g + 4 * v[k], static_cast<scalar_t>(gx[k]));
      atomicAdd(g + 4 * v[k] + 1, static_cast<scalar_t>(gy[k]));
      atomicAdd(g + 4 * v[k] + 3, static_cast<scalar_t>(gw[k]));
    }
  }
}

template <typename attr_t, typename rast_t>
__global__ void interpolate_forward_kernel(const attr_t* __restrict__ attr,
                                           const rast_t* __restrict__ rast,
                                           const int32_t* __restrict__ tri, int64_t batch,
                                           int64_t pixels, int64_t num_vertices,
                                           int64_t channels, int64_t num_triangles,
                                           bool broadcast, attr_t* __restrict__ out) {
  using acc_t = typename raster::Acc<attr_t>::type;
  for (int64_t i = first_index(); i < batch * pixels * channels; i += grid_stride()) {
    const int64_t pixel = i / channels, ch = i % channels;
    const attr_t* image_attr = attr + (broadcast ? 0 : pixel / pixels) * num_vertices * channels;
    const auto p = raster::corners_of(rast + 4 * pixel, image_attr, tri, num_triangles,
                                      num_vertices, channels);
    if (p.triangle < 0) continue;
    out[i] = static_cast<attr_t>(raster::interpolate_value<acc_t>(
        p.u, p.v, static_cast<acc_t>(p.a[0][ch]), static_cast<acc_t>(p.a[1][ch]),
        static_cast<acc_t>(p.a[2][ch])));
  }
}

template <typename attr_t, typename rast_t>
__global__ void interpolate_backward_kernel(
    const attr_t* __restrict__ grad_out, const attr_t* __restrict__ attr,
    const rast_t* __restrict__ rast, const int32_t* __restrict__ tri, int64_t batch,
    int64_t pixels, int64_t num_vertices, int64_t channels, int64_t num_triangles, bool broadcast,
    typename raster::Acc<attr_t>::type* __restrict__ grad_attr, rast_t* __restrict__ grad_rast) {
  using acc_t = typename raster::Acc<attr_t>::type;
  for (int64_t i = first_index(); i < batch * pixels; i += grid_stride()) {
    const int64_t source = broadcast ? 0 : i / pixels;
    const attr_t* image_attr = attr + source * num_vertices * channels;
    const auto p = raster::corners_of(rast + 4 * i, image_attr, tri, num_triangles, num_vertices,
                                      channels);
    if (p.triangle < 0) continue;
    const int32_t* v = tri + 3 * p.triangle;
    acc_t* image_grad = grad_attr + source * num_vertices * channels;
    acc_t gu = 0, gv = 0;
    for (int64_t ch = 0; ch < channels; ++ch) {
      acc_t gk[3], du, dv;
      raster::interpolate_backward<acc_t>(
          p.u, p.v, static_cast<acc_t>(p.a[0][ch]), static_cast<acc_t>(p.a[1][ch]),
          static_cast<acc_t>(p.a[2][ch]), static_cast<acc_t>(grad_out[i * channels + ch]), gk, du,
          dv);
      for (int k = 0; k < 3; ++k) atomicAdd(image_grad + v[k] * channels + ch, gk[k]);
      gu += du;
      gv += dv;
    }
    grad_rast[4 * i] = static_cast<rast_t>(gu);
    grad_rast[4 * i + 1] = static_cast<rast_t>(gv);
  }
}

void check_cuda(const char* fn, std::initializer_list<const at::Tensor*> tensors) {
  const at::Device device = (*tensors.begin())->device();
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->is_cuda() && t->device() == device && t->is_contiguous(), fn,
                "(): every input must be a contiguous CUDA tensor on one device");
}

void check_tri(const char* fn, const at::Tensor& tri) {
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3 && tri.scalar_type() == at::kInt, fn,
              "(): tri must be a (T, 3) int32 tensor");
}

void check_interpolate(const char* fn, const at::Tensor& attr, const at::Tensor& rast) {
  TORCH_CHECK(attr.dim() == 3 && rast.dim() == 4 && rast.size(3) == 4 &&
                  (attr.size(0) == 1 || attr.size(0) == rast.size(0)),
              fn, "(): expected attr (N | 1, V, A) and rast (N, H, W, 4)");
  TORCH_CHECK(rast.scalar_type() == at::kFloat || rast.scalar_type() == at::kDouble, fn,
              "(): rast must be float32 or float64");
}

}  // namespace

at::Tensor rasterize_forward_cuda(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                  int64_t width) {
  check_cuda("rasterize_forward_cuda", {&pos, &tri});
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4,
              "rasterize_forward_cuda(): pos must be a (N, V, 4) tensor");
  TORCH_CHECK(height > 0 && width > 0, "rasterize_forward_cuda(): resolution must be positive");
  check_tri("rasterize_forward_cuda", tri);
  const c10::cuda::CUDAGuard guard(pos.device());
  const int64_t batch = pos.size(0), num_vertices = pos.size(1), num_triangles = tri.size(0);
  at::Tensor out = at::zeros({batch, height, width, 4}, pos.options());
  if (batch == 0 || num_triangles == 0) return out;
  const int64_t pairs = batch * num_triangles, pixels = batch * height * width;
  at::Tensor setups = at::empty({pairs * static_cast<int64_t>(sizeof(TriangleSetup))},
                                pos.options().dtype(at::kByte));
  // all bits set = raster::kNoDepth, above every key
  at::Tensor keys = at::full({pixels}, -1, pos.options().dtype(at::kLong));
  at::Tensor ids = at::full({pixels}, INT_MAX, pos.options().dtype(at::kInt));
  auto* setup_ptr = reinterpret_cast<TriangleSetup*>(setups.data_ptr<uint8_t>());
  auto* key_ptr = reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "rasterize_forward_cuda", [&] {
    setup_kernel<scalar_t><<<blocks_for(pairs), kThreads, 0, stream>>>(
        pos.data_ptr<scalar_t>(), tri.data_ptr<int32_t>(), batch, num_vertices, num_triangles,
        height, width, setup_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fragment_kernel<false><<<blocks_for(pairs), kThreads, 0, stream>>>(
        setup_ptr, batch, num_triangles, height, width, key_ptr, ids.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    fragment_kernel<true><<<blocks_for(pairs), kThreads, 0, stream>>>(
        setup_ptr, batch, num_triangles, height, width, key_ptr, ids.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    resolve_kernel<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        setup_ptr, ids.data_ptr<int32_t>(), batch, num_triangles, height, width,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rasterize_backward_cuda(const at::Tensor& grad_rast, const at::Tensor& pos,
                                   const at::Tensor& tri, const at::Tensor& rast) {
  check_cuda("rasterize_backward_cuda", {&grad_rast, &pos, &tri, &rast});
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4 && rast.dim() == 4 && rast.size(3) == 4 &&
                  rast.size(0) == pos.size(0) && grad_rast.sizes() == rast.sizes() &&
                  grad_rast.scalar_type() == pos.scalar_type() &&
                  rast.scalar_type() == pos.scalar_type(),
              "rasterize_backward_cuda(): expected pos (N, V, 4), rast and grad_rast "
              "(N, H, W, 4) of pos's dtype");
  check_tri("rasterize_backward_cuda", tri);
  const c10::cuda::CUDAGuard guard(pos.device());
  const int64_t batch = pos.size(0), height = rast.size(1), width = rast.size(2);
  at::Tensor grad_pos = at::zeros_like(pos);
  const int64_t pixels = batch * height * width;
  if (pixels == 0 || tri.size(0) == 0) return grad_pos;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "rasterize_backward_cuda", [&] {
    rasterize_backward_kernel<scalar_t>
        <<<blocks_for(pixels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad_rast.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), tri.data_ptr<int32_t>(),
            rast.data_ptr<scalar_t>(), batch, pos.size(1), tri.size(0), height, width,
            grad_pos.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_pos;
}

at::Tensor interpolate_forward_cuda(const at::Tensor& attr, const at::Tensor& rast,
                                    const at::Tensor& tri) {
  check_cuda("interpolate_forward_cuda", {&attr, &rast, &tri});
  check_interpolate("interpolate_forward_cuda", attr, rast);
  check_tri("interpolate_forward_cuda", tri);
  const c10::cuda::CUDAGuard guard(attr.device());
  const int64_t batch = rast.size(0), pixels = rast.size(1) * rast.size(2),
                channels = attr.size(2);
  at::Tensor out = at::zeros({batch, rast.size(1), rast.size(2), channels}, attr.options());
  const int64_t work = batch * pixels * channels;
  if (work == 0 || tri.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, attr.scalar_type(), "interpolate_forward_cuda", [&] {
        using attr_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES(rast.scalar_type(), "interpolate_forward_cuda", [&] {
          interpolate_forward_kernel<attr_t, scalar_t>
              <<<blocks_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                  attr.data_ptr<attr_t>(), rast.data_ptr<scalar_t>(), tri.data_ptr<int32_t>(),
                  batch, pixels, attr.size(1), channels, tri.size(0), attr.size(0) == 1,
                  out.data_ptr<attr_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cuda(const at::Tensor& grad_out,
                                                             const at::Tensor& attr,
                                                             const at::Tensor& rast,
                                                             const at::Tensor& tri) {
  check_cuda("interpolate_backward_cuda", {&grad_out, &attr, &rast, &tri});
  check_interpolate("interpolate_backward_cuda", attr, rast);
  check_tri("interpolate_backward_cuda", tri);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == rast.size(0) &&
                  grad_out.size(1) == rast.size(1) && grad_out.size(2) == rast.size(2) &&
                  grad_out.size(3) == attr.size(2) &&
                  grad_out.scalar_type() == attr.scalar_type(),
              "interpolate_backward_cuda(): grad_out must be (N, H, W, A) of attr's dtype");
  const c10::cuda::CUDAGuard guard(attr.device());
  const int64_t batch = rast.size(0), pixels = rast.size(1) * rast.size(2);
  const auto acc_dtype = attr.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_attr = at::zeros(attr.sizes(), attr.options().dtype(acc_dtype));
  at::Tensor grad_rast = at::zeros_like(rast);
  if (batch * pixels > 0 && tri.size(0) > 0 && attr.size(2) > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, attr.scalar_type(), "interpolate_backward_cuda", [&] {
          using attr_t = scalar_t;
          using acc_t = typename raster::Acc<attr_t>::type;
          AT_DISPATCH_FLOATING_TYPES(rast.scalar_type(), "interpolate_backward_cuda", [&] {
            interpolate_backward_kernel<attr_t, scalar_t>
                <<<blocks_for(batch * pixels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                    grad_out.data_ptr<attr_t>(), attr.data_ptr<attr_t>(),
                    rast.data_ptr<scalar_t>(), tri.data_ptr<int32_t>(), batch, pixels,
                    attr.size(1), attr.size(2), tri.size(0), attr.size(0) == 1,
                    grad_attr.data_ptr<acc_t>(), grad_rast.data_ptr<scalar_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
  }
  return {grad_attr.to(attr.scalar_type()), grad_rast};
}

}  // namespace drpose
