// rasterize and interpolate with nvdiffrast's contract on the CPU (OpenMP). The maths (edge
// functions, coverage, clipping, depth keys, barycentric and interpolation gradients) is in
// csrc/rasterize_math.h, shared with csrc/rasterize_cuda.cu; this file only loops.
//
// rasterize_forward_cpu: pos (N, V, 4) clip space (float32 | float64), tri (T, 3) int32 ->
// rast (N, H, W, 4) = (u, v, z/w, triangle_id + 1) in pos's dtype, 0 where no triangle covers
// the pixel. All (image, triangle) pairs are set up in parallel, binned into bands of rows per
// image, and all (image, band) pairs are rasterized in parallel; each pixel is owned by one band,
// so the result does not depend on the number of threads.
// rasterize_backward_cpu: grad pos (N, V, 4) from grad rast, parallel over images (each image
// owns its vertices' gradients: deterministic).
// interpolate_forward_cpu / interpolate_backward_cpu: attr (N | 1, V, A), rast (N, H, W, 4),
// tri (T, 3) -> (N, H, W, A); and grad attr (attr's shape), grad rast ((u, v) channels).
#include "ops.h"
#include "rasterize_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace drpose {
namespace {

using raster::Fragment;
using raster::TriangleSetup;

constexpr int64_t kBandRows = 8;

template <typename scalar_t>
void rasterize_images(const scalar_t* pos, const int32_t* tri, int64_t batch,
                      int64_t num_vertices, int64_t num_triangles, int64_t height, int64_t width,
                      scalar_t* out) {
  // 1. set up every (image, triangle)
  std::vector<TriangleSetup> setups(batch * num_triangles);
  at::parallel_for(0, batch * num_triangles, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / num_triangles, t = i % num_triangles;
      const int32_t* v = tri + 3 * t;
      const scalar_t* p = pos + n * num_vertices * 4;
      setups[i] = raster::setup_triangle(p + 4 * v[0], p + 4 * v[1], p + 4 * v[2], height, width);
    }
  });
  // 2. bin triangle ids (ascending, i.e. draw order) into bands of rows, per image
  const int64_t num_bands = (height + kBandRows - 1) / kBandRows;
  std::vector<std::vector<int32_t>> bins(batch * num_bands);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t t = 0; t < num_triangles; ++t) {
      const TriangleSetup& s = setups[n * num_triangles + t];
      if (!raster::drawable(s)) continue;
      for (int64_t b = s.row0 / kBandRows; b <= s.row1 / kBandRows; ++b)
        bins[n * num_bands + b].push_back(static_cast<int32_t>(t));
    }
  }
  // 3. rasterize the bands of all images in parallel; a pixel belongs to one band
  at::parallel_for(0, batch * num_bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> zbuf;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / num_bands, band = i % num_bands;
      const TriangleSetup* image_setups = setups.data() + n * num_triangles;
      scalar_t* image_out = out + n * height * width * 4;
      const int64_t r_begin = band * kBandRows;
      const int64_t r_end = std::min(height, r_begin + kBandRows);
      zbuf.assign((r_end - r_begin) * width, raster::kNoDepth);
      for (int32_t t : bins[i]) {
        const TriangleSetup& s = image_setups[t];
        const int64_t r0 = std::max(s.row0, r_begin), r1 = std::min(s.row1, r_end - 1);
        for (int64_t r = r0; r <= r1; ++r) {
          const double py = raster::pixel_centre(r, height);
          uint64_t* zrow = zbuf.data() + (r - r_begin) * width;
          scalar_t* orow = image_out + r * width * 4;
          for (int64_t c = s.col0; c <= s.col1; ++c) {
            Fragment f;
            if (!raster::shade(s, raster::pixel_centre(c, width), py, f)) continue;
            const uint64_t key = raster::depth_key(f.depth);
            if (!(key < zrow[c])) continue;  // strict: at equal depth the lower id stays
            zrow[c] = key;
            scalar_t* o = orow + 4 * c;
            o[0] = static_cast<scalar_t>(f.u);
            o[1] = static_cast<scalar_t>(f.v);
            o[2] = static_cast<scalar_t>(f.depth);
            o[3] = static_cast<scalar_t>(t + 1);
          }
        }
      }
    }
  });
}

// grad pos of one image from the (u, v) gradients of its covered pixels.
template <typename scalar_t>
void rasterize_backward_image(const scalar_t* grad_rast, const scalar_t* pos, const int32_t* tri,
                              const scalar_t* rast, int64_t num_triangles, int64_t height,
                              int64_t width, scalar_t* grad_pos) {
  for (int64_t r = 0; r < height; ++r) {
    const double py = raster::pixel_centre(r, height);
    for (int64_t c = 0; c < width; ++c) {
      const int64_t pixel = (r * width + c) * 4;
      const int64_t t = raster::triangle_of(rast[pixel + 3], num_triangles);
      const double gu = static_cast<double>(grad_rast[pixel]);
      const double gv = static_cast<double>(grad_rast[pixel + 1]);
      if (t < 0 || (gu == 0.0 && gv == 0.0)) continue;
      const int32_t* v = tri + 3 * t;
      double x[3], y[3], w[3], gx[3], gy[3], gw[3];
      for (int k = 0; k < 3; ++k) {
        x[k] = static_cast<double>(pos[4 * v[k]]);
        y[k] = static_cast<double>(pos[4 * v[k] + 1]);
        w[k] = static_cast<double>(pos[4 * v[k] + 3]);
      }
      raster::barycentric_backward(x, y, w, raster::pixel_centre(c, width), py, gu, gv, gx, gy,
                                   gw);
      for (int k = 0; k < 3; ++k) {
        scalar_t* g = grad_pos + 4 * v[k];
        g[0] += static_cast<scalar_t>(gx[k]);
        g[1] += static_cast<scalar_t>(gy[k]);
        g[3] += static_cast<scalar_t>(gw[k]);
      }
    }
  }
}

template <typename scalar_t>
using acc_type = typename raster::Acc<scalar_t>::type;

void check_cpu(const char* fn, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), fn,
                "(): every input must be a contiguous CPU tensor");
}

void check_tri(const char* fn, const at::Tensor& tri, int64_t num_vertices) {
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3 && tri.scalar_type() == at::kInt, fn,
              "(): tri must be a (T, 3) int32 tensor");
  const int32_t* v = tri.data_ptr<int32_t>();
  for (int64_t t = 0; t < tri.size(0); ++t)
    TORCH_CHECK(raster::valid_triangle(v + 3 * t, num_vertices), fn, "(): triangle ", t,
                " has a vertex index outside [0, ", num_vertices, ")");
}

void check_rast_ids(const char* fn, const at::Tensor& rast, int64_t num_triangles) {
  AT_DISPATCH_FLOATING_TYPES(rast.scalar_type(), "check_rast_ids", [&] {
    const scalar_t* r = rast.data_ptr<scalar_t>();
    const int64_t pixels = rast.numel() / 4;
    for (int64_t i = 0; i < pixels; ++i) {
      const double id = static_cast<double>(r[4 * i + 3]);
      TORCH_CHECK(id == 0.0 || raster::triangle_of(r[4 * i + 3], num_triangles) >= 0, fn,
                  "(): rast names triangle id ", id, ", but tri has ", num_triangles,
                  " triangles");
    }
  });
}

}  // namespace

at::Tensor rasterize_forward_cpu(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                 int64_t width) {
  check_cpu("rasterize_forward_cpu", {&pos, &tri});
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4,
              "rasterize_forward_cpu(): pos must be a (N, V, 4) tensor");
  TORCH_CHECK(height > 0 && width > 0, "rasterize_forward_cpu(): resolution must be positive");
  check_tri("rasterize_forward_cpu", tri, pos.size(1));
  const int64_t batch = pos.size(0), num_vertices = pos.size(1), num_triangles = tri.size(0);
  at::Tensor out = at::zeros({batch, height, width, 4}, pos.options());
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "rasterize_forward_cpu", [&] {
    rasterize_images<scalar_t>(pos.data_ptr<scalar_t>(), tri.data_ptr<int32_t>(), batch,
                               num_vertices, num_triangles, height, width,
                               out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor rasterize_backward_cpu(const at::Tensor& grad_rast, const at::Tensor& pos,
                                  const at::Tensor& tri, const at::Tensor& rast) {
  check_cpu("rasterize_backward_cpu", {&grad_rast, &pos, &tri, &rast});
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4 && rast.dim() == 4 && rast.size(3) == 4 &&
                  rast.size(0) == pos.size(0) && grad_rast.sizes() == rast.sizes() &&
                  grad_rast.scalar_type() == pos.scalar_type() &&
                  rast.scalar_type() == pos.scalar_type(),
              "rasterize_backward_cpu(): expected pos (N, V, 4), rast and grad_rast (N, H, W, 4) "
              "of pos's dtype");
  check_tri("rasterize_backward_cpu", tri, pos.size(1));
  const int64_t batch = pos.size(0), num_vertices = pos.size(1), height = rast.size(1),
                width = rast.size(2), num_triangles = tri.size(0);
  at::Tensor grad_pos = at::zeros_like(pos);
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "rasterize_backward_cpu", [&] {
    const scalar_t* g = grad_rast.data_ptr<scalar_t>();
    const scalar_t* p = pos.data_ptr<scalar_t>();
    const scalar_t* r = rast.data_ptr<scalar_t>();
    scalar_t* out = grad_pos.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t image = n * height * width * 4, verts = n * num_vertices * 4;
        rasterize_backward_image(g + image, p + verts, tri.data_ptr<int32_t>(), r + image,
                                 num_triangles, height, width, out + verts);
      }
    });
  });
  return grad_pos;
}

at::Tensor interpolate_forward_cpu(const at::Tensor& attr, const at::Tensor& rast,
                                   const at::Tensor& tri) {
  check_cpu("interpolate_forward_cpu", {&attr, &rast, &tri});
  TORCH_CHECK(attr.dim() == 3 && rast.dim() == 4 && rast.size(3) == 4 &&
                  (attr.size(0) == 1 || attr.size(0) == rast.size(0)),
              "interpolate_forward_cpu(): expected attr (N | 1, V, A) and rast (N, H, W, 4)");
  check_tri("interpolate_forward_cpu", tri, attr.size(1));
  check_rast_ids("interpolate_forward_cpu", rast, tri.size(0));
  const int64_t batch = rast.size(0), pixels = rast.size(1) * rast.size(2),
                verts = attr.size(1), channels = attr.size(2), num_triangles = tri.size(0);
  const bool broadcast = attr.size(0) == 1;
  at::Tensor out = at::zeros({batch, rast.size(1), rast.size(2), channels}, attr.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, attr.scalar_type(), "interpolate_forward_cpu", [&] {
        using attr_t = scalar_t;
        using acc_t = acc_type<attr_t>;
        const attr_t* a = attr.data_ptr<attr_t>();
        attr_t* o = out.data_ptr<attr_t>();
        AT_DISPATCH_FLOATING_TYPES(rast.scalar_type(), "interpolate_forward_cpu", [&] {
              const scalar_t* r = rast.data_ptr<scalar_t>();
              at::parallel_for(0, batch * pixels, 1024, [&](int64_t begin, int64_t end) {
                for (int64_t i = begin; i < end; ++i) {
                  const attr_t* image_attr = a + (broadcast ? 0 : i / pixels) * verts * channels;
                  const auto p = raster::corners_of(r + 4 * i, image_attr,
                                                    tri.data_ptr<int32_t>(), num_triangles,
                                                    verts, channels);
                  if (p.triangle < 0) continue;
                  for (int64_t ch = 0; ch < channels; ++ch)
                    o[i * channels + ch] = static_cast<attr_t>(raster::interpolate_value<acc_t>(
                        p.u, p.v, static_cast<acc_t>(p.a[0][ch]), static_cast<acc_t>(p.a[1][ch]),
                        static_cast<acc_t>(p.a[2][ch])));
                }
              });
            });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> interpolate_backward_cpu(const at::Tensor& grad_out,
                                                            const at::Tensor& attr,
                                                            const at::Tensor& rast,
                                                            const at::Tensor& tri) {
  check_cpu("interpolate_backward_cpu", {&grad_out, &attr, &rast, &tri});
  TORCH_CHECK(attr.dim() == 3 && rast.dim() == 4 && rast.size(3) == 4 &&
                  (attr.size(0) == 1 || attr.size(0) == rast.size(0)) &&
                  grad_out.dim() == 4 && grad_out.size(0) == rast.size(0) &&
                  grad_out.size(1) == rast.size(1) && grad_out.size(2) == rast.size(2) &&
                  grad_out.size(3) == attr.size(2) &&
                  grad_out.scalar_type() == attr.scalar_type(),
              "interpolate_backward_cpu(): expected attr (N | 1, V, A), rast (N, H, W, 4) and "
              "grad_out (N, H, W, A) of attr's dtype");
  check_tri("interpolate_backward_cpu", tri, attr.size(1));
  check_rast_ids("interpolate_backward_cpu", rast, tri.size(0));
  const int64_t batch = rast.size(0), pixels = rast.size(1) * rast.size(2),
                verts = attr.size(1), channels = attr.size(2), num_triangles = tri.size(0);
  const bool broadcast = attr.size(0) == 1;
  const auto acc_dtype = attr.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_attr = at::zeros(attr.sizes(), attr.options().dtype(acc_dtype));
  at::Tensor grad_rast = at::zeros_like(rast);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, attr.scalar_type(), "interpolate_backward_cpu", [&] {
        using attr_t = scalar_t;
        using acc_t = acc_type<attr_t>;
        const attr_t* a = attr.data_ptr<attr_t>();
        const attr_t* g = grad_out.data_ptr<attr_t>();
        acc_t* ga = grad_attr.data_ptr<acc_t>();
        AT_DISPATCH_FLOATING_TYPES(rast.scalar_type(), "interpolate_backward_cpu", [&] {
              const scalar_t* r = rast.data_ptr<scalar_t>();
              scalar_t* gr = grad_rast.data_ptr<scalar_t>();
              // Images in parallel when each has its own attributes; one after the other when
              // they share them (broadcast): every sum is accumulated in a fixed order.
              const int64_t grain = broadcast ? batch : 1;
              at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
                for (int64_t n = begin; n < end; ++n) {
                  const int64_t source = broadcast ? 0 : n;
                  const attr_t* image_attr = a + source * verts * channels;
                  acc_t* image_grad = ga + source * verts * channels;
                  for (int64_t i = n * pixels; i < (n + 1) * pixels; ++i) {
                    const auto p = raster::corners_of(r + 4 * i, image_attr,
                                                      tri.data_ptr<int32_t>(), num_triangles,
                                                      verts, channels);
                    if (p.triangle < 0) continue;
                    const int32_t* v = tri.data_ptr<int32_t>() + 3 * p.triangle;
                    acc_t gu = 0, gv = 0;
                    for (int64_t ch = 0; ch < channels; ++ch) {
                      acc_t gk[3], du, dv;
                      raster::interpolate_backward<acc_t>(
                          p.u, p.v, static_cast<acc_t>(p.a[0][ch]),
                          static_cast<acc_t>(p.a[1][ch]), static_cast<acc_t>(p.a[2][ch]),
                          static_cast<acc_t>(g[i * channels + ch]), gk, du, dv);
                      for (int k = 0; k < 3; ++k) image_grad[v[k] * channels + ch] += gk[k];
                      gu += du;
                      gv += dv;
                    }
                    gr[4 * i] = static_cast<scalar_t>(gu);
                    gr[4 * i + 1] = static_cast<scalar_t>(gv);
                  }
                }
              });
            });
      });
  return {grad_attr.to(attr.scalar_type()), grad_rast};
}

}  // namespace drpose
