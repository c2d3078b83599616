// Triangle rasterizer with nvdiffrast's output contract, on the CPU (OpenMP).
//
// Inputs: pos (N, V, 4) clip-space vertices (float32 | float64), tri (T, 3) int32.
// Output: rast (N, H, W, 4) = (u, v, z/w, triangle_id + 1) in pos's dtype, 0 where no triangle
// covers the pixel; rows bottom-up (OpenGL): pixel (row r, column c) samples the NDC point
//   px = (2c + 1) / W - 1,   py = (2r + 1) / H - 1.
//
// Maths (all in double, the same expressions in the same order as the torch reference in
// drpose/ops/rasterize.py, so both agree to the last bit): with X_i = x_i - px w_i and
// Y_i = y_i - py w_i, the homogeneous edge functions e_0 = X_1 Y_2 - X_2 Y_1 (and cyclic) are
// linear in (px, py):  e_k = (C_k + A_k px) + B_k py.  S = e_0 + e_1 + e_2. The pixel is covered
// when S != 0 and every e_k / S >= 0 (edges inclusive); u = e_0 / S and v = e_1 / S are the
// perspective-correct barycentrics of vertices 0 and 1. The clip-space point is
// Z = sum e_k z_k / S, W = sum e_k w_k / S; it is kept only when -W <= Z <= W (the near/far clip
// planes; this also drops everything behind the camera, W <= 0), and its depth is Z / W.
// Depth test: the smallest depth wins; at equal depth the lowest triangle id wins (triangles are
// drawn in id order with a strict "less" test, like OpenGL's default GL_LESS). Pixels exactly on
// an edge shared by two triangles are covered by both and resolved by that same test.
// Degenerate (S == 0) and non-finite triangles are skipped.
//
// Parallelism: all (image, triangle) pairs are set up in parallel, binned into bands of rows per
// image, and all (image, band) pairs are rasterized in parallel; each pixel is owned by one band,
// so the result does not depend on the number of threads.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// No fused multiply-add contraction (the build may use -march=native): the kernel must evaluate
// exactly the expressions of the torch reference to give bit-identical coverage and ids.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace drpose {
namespace {

constexpr int64_t kBandRows = 8;

struct TriangleSetup {
  double A[3], B[3], C[3];  // e_k = (C_k + A_k px) + B_k py
  double z[3], w[3];
  int64_t row0, row1, col0, col1;  // inclusive pixel box; row0 > row1 when nothing to draw
};

// Pixel index range [lo, hi] whose centres (2i + 1) / n - 1 may fall in [a, b]: exact up to a
// 1e-9 pixel margin against rounding (coverage itself is decided by the edge functions).
inline void pixel_range(double a, double b, int64_t n, int64_t& lo, int64_t& hi) {
  const double fa = std::ceil((a + 1.0) * 0.5 * n - 0.5 - 1e-9);
  const double fb = std::floor((b + 1.0) * 0.5 * n - 0.5 + 1e-9);
  lo = static_cast<int64_t>(std::max(fa, 0.0));
  hi = static_cast<int64_t>(std::min(fb, static_cast<double>(n - 1)));
}

template <typename scalar_t>
TriangleSetup setup_triangle(const scalar_t* p0, const scalar_t* p1, const scalar_t* p2,
                             int64_t height, int64_t width) {
  TriangleSetup s;
  s.row0 = 1;
  s.row1 = 0;
  const double x[3] = {p0[0], p1[0], p2[0]};
  const double y[3] = {p0[1], p1[1], p2[1]};
  const double z[3] = {p0[2], p1[2], p2[2]};
  const double w[3] = {p0[3], p1[3], p2[3]};
  for (int k = 0; k < 3; ++k) {
    if (!std::isfinite(x[k]) || !std::isfinite(y[k]) || !std::isfinite(z[k]) ||
        !std::isfinite(w[k]))
      return s;
    s.z[k] = z[k];
    s.w[k] = w[k];
  }
  if (w[0] <= 0.0 && w[1] <= 0.0 && w[2] <= 0.0) return s;  // entirely behind the camera
  for (int k = 0; k < 3; ++k) {
    const int i = (k + 1) % 3, j = (k + 2) % 3;
    s.C[k] = x[i] * y[j] - x[j] * y[i];
    s.A[k] = y[i] * w[j] - y[j] * w[i];
    s.B[k] = x[j] * w[i] - x[i] * w[j];
  }
  if (w[0] > 0.0 && w[1] > 0.0 && w[2] > 0.0) {
    double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
    for (int k = 0; k < 3; ++k) {
      const double sx = x[k] / w[k], sy = y[k] / w[k];
      xmin = std::min(xmin, sx);
      xmax = std::max(xmax, sx);
      ymin = std::min(ymin, sy);
      ymax = std::max(ymax, sy);
    }
    if (xmax < -1.0 - 2.0 / width || xmin > 1.0 + 2.0 / width || ymax < -1.0 - 2.0 / height ||
        ymin > 1.0 + 2.0 / height)
      return s;  // off screen
    pixel_range(xmin, xmax, width, s.col0, s.col1);
    pixel_range(ymin, ymax, height, s.row0, s.row1);
  } else {  // crosses w = 0: the projected box is unbounded, test every pixel
    s.col0 = 0;
    s.col1 = width - 1;
    s.row0 = 0;
    s.row1 = height - 1;
  }
  return s;
}

template <typename scalar_t>
void rasterize_images(const scalar_t* pos, const int32_t* tri, int64_t batch,
                      int64_t num_vertices, int64_t num_triangles, int64_t height, int64_t width,
                      scalar_t* out) {
  // 1. set up every (image, triangle)
  std::vector<TriangleSetup> setups(batch * num_triangles);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < batch * num_triangles; ++i) {
    const int64_t n = i / num_triangles, t = i % num_triangles;
    const int32_t* v = tri + 3 * t;
    if (v[0] < 0 || v[0] >= num_vertices || v[1] < 0 || v[1] >= num_vertices || v[2] < 0 ||
        v[2] >= num_vertices) {
      setups[i].row0 = 1;
      setups[i].row1 = 0;
      continue;
    }
    const scalar_t* p = pos + n * num_vertices * 4;
    setups[i] = setup_triangle(p + 4 * v[0], p + 4 * v[1], p + 4 * v[2], height, width);
  }
  // 2. bin triangle ids (ascending, i.e. draw order) into bands of rows, per image
  const int64_t num_bands = (height + kBandRows - 1) / kBandRows;
  std::vector<std::vector<int32_t>> bins(batch * num_bands);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t t = 0; t < num_triangles; ++t) {
      const TriangleSetup& s = setups[n * num_triangles + t];
      if (s.row0 > s.row1 || s.col0 > s.col1) continue;
      for (int64_t b = s.row0 / kBandRows; b <= s.row1 / kBandRows; ++b)
        bins[n * num_bands + b].push_back(static_cast<int32_t>(t));
    }
  }
  // 3. rasterize the bands of all images in parallel; a pixel belongs to one band
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < batch * num_bands; ++i) {
    const int64_t n = i / num_bands, band = i % num_bands;
    const TriangleSetup* image_setups = setups.data() + n * num_triangles;
    scalar_t* image_out = out + n * height * width * 4;
    const int64_t r_begin = band * kBandRows;
    const int64_t r_end = std::min(height, r_begin + kBandRows);
    std::vector<double> zbuf((r_end - r_begin) * width, std::numeric_limits<double>::infinity());
    for (int32_t t : bins[i]) {
      const TriangleSetup& s = image_setups[t];
      const int64_t r0 = std::max(s.row0, r_begin), r1 = std::min(s.row1, r_end - 1);
      for (int64_t r = r0; r <= r1; ++r) {
        const double py = (2.0 * r + 1.0) / height - 1.0;
        const double row_term[3] = {s.B[0] * py, s.B[1] * py, s.B[2] * py};
        double* zrow = zbuf.data() + (r - r_begin) * width;
        scalar_t* orow = image_out + r * width * 4;
        for (int64_t c = s.col0; c <= s.col1; ++c) {
          const double px = (2.0 * c + 1.0) / width - 1.0;
          const double e0 = (s.C[0] + s.A[0] * px) + row_term[0];
          const double e1 = (s.C[1] + s.A[1] * px) + row_term[1];
          const double e2 = (s.C[2] + s.A[2] * px) + row_term[2];
          const double S = (e0 + e1) + e2;
          const bool inside = S > 0.0 ? (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0)
                                      : (S < 0.0 && e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0);
          if (!inside) continue;
          const double Z = ((e0 * s.z[0] + e1 * s.z[1]) + e2 * s.z[2]) / S;
          const double W = ((e0 * s.w[0] + e1 * s.w[1]) + e2 * s.w[2]) / S;
          if (!(W > 0.0 && Z >= -W && Z <= W)) continue;
          const double depth = Z / W;
          if (!(depth < zrow[c])) continue;
          zrow[c] = depth;
          scalar_t* o = orow + 4 * c;
          o[0] = static_cast<scalar_t>(e0 / S);
          o[1] = static_cast<scalar_t>(e1 / S);
          o[2] = static_cast<scalar_t>(depth);
          o[3] = static_cast<scalar_t>(t + 1);
        }
      }
    }
  }
}

}  // namespace

at::Tensor rasterize_forward_cpu(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                 int64_t width) {
  TORCH_CHECK(pos.device().is_cpu() && tri.device().is_cpu(),
              "rasterize_forward_cpu(): pos and tri must be CPU tensors");
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4 && pos.is_contiguous(),
              "rasterize_forward_cpu(): pos must be a contiguous (N, V, 4) tensor");
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3 && tri.is_contiguous() &&
                  tri.scalar_type() == at::kInt,
              "rasterize_forward_cpu(): tri must be a contiguous (T, 3) int32 tensor");
  TORCH_CHECK(height > 0 && width > 0, "rasterize_forward_cpu(): resolution must be positive");
  const int64_t batch = pos.size(0), num_vertices = pos.size(1), num_triangles = tri.size(0);
  at::Tensor out = at::zeros({batch, height, width, 4}, pos.options());
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "rasterize_forward_cpu", [&] {
    const scalar_t* p = pos.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    rasterize_images<scalar_t>(p, tri.data_ptr<int32_t>(), batch, num_vertices, num_triangles,
                               height, width, o);
  });
  return out;
}

}  // namespace drpose
