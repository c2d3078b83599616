// The per-triangle and per-pixel maths of rasterize and interpolate, shared by the CPU kernels
// (csrc/rasterize_cpu.cpp) and the CUDA kernels (csrc/rasterize_cuda.cu): every function here is
// DRPOSE_HD, so the CPU tests exercise the code the GPU runs. The contract is nvdiffrast's, as
// specified by the torch reference in drpose/ops/rasterize.py.
//
// Forward (all in double, the same expressions in the same order as the torch reference, so both
// agree to the last bit): pixel (row r, column c) samples the NDC point
//   px = (2c + 1) / W - 1,   py = (2r + 1) / H - 1   (rows bottom-up, OpenGL).
// With X_i = x_i - px w_i and Y_i = y_i - py w_i, the homogeneous edge functions
// e_0 = X_1 Y_2 - X_2 Y_1 (and cyclic) are linear in (px, py):  e_k = (C_k + A_k px) + B_k py,
//   A_k = y_{k+1} w_{k+2} - y_{k+2} w_{k+1},  B_k = x_{k+2} w_{k+1} - x_{k+1} w_{k+2},
//   C_k = x_{k+1} y_{k+2} - x_{k+2} y_{k+1}.
// S = (e_0 + e_1) + e_2. The pixel is covered when S != 0 and every e_k / S >= 0 (edges
// inclusive); u = e_0 / S and v = e_1 / S are the perspective-correct barycentrics of vertices 0
// and 1. The clip-space point is Z = sum e_k z_k / S, W = sum e_k w_k / S; it is kept only when
// -W <= Z <= W (near/far planes; this also drops everything behind the camera, W <= 0), and its
// depth is Z / W. Depth test: the smallest depth wins, at equal depth the lowest triangle id
// (OpenGL's GL_LESS in draw order). Both kernels compare depths through depth_key(), whose
// unsigned order is the order of the depths, so the GPU can resolve with one 64-bit atomicMin per
// pixel (then one 32-bit atomicMin on the id among the pixel's nearest fragments).
//
// Backward (through (u, v) at fixed pixel centres, as nvdiffrast without antialiasing): with
// g_k = dL/de_k = (g_u (δ_k0 - u) + g_v (δ_k1 - v)) / S,
//   dL/dx_i = dL/dX_i = g_{i-1} Y_{i+1} - g_{i+1} Y_{i+2},
//   dL/dy_i = dL/dY_i = g_{i+1} X_{i+2} - g_{i-1} X_{i+1},
//   dL/dw_i = -px dL/dX_i - py dL/dY_i,   dL/dz_i = 0.
//
// Interpolation: a = u a_0 + v a_1 + (1 - u - v) a_2 (in the attribute's precision, in the
// reference's order); its gradients dL/da_0 = u g, dL/da_1 = v g, dL/da_2 = (1 - u - v) g,
// dL/du = g a_0 - g a_2, dL/dv = g a_1 - g a_2.
#pragma once

#include <cstdint>

#include "host_device.h"

#include <cmath>
#include <cstring>

#if !defined(__CUDACC__)
// No fused multiply-add contraction in this translation unit (the build may use -march=native):
// the forward must evaluate exactly the reference's expressions to give bit-identical coverage
// and ids. On the device the forward uses the round-to-nearest intrinsics, which nvcc never
// contracts.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#endif

namespace drpose {
namespace raster {

// ---- IEEE double arithmetic, never contracted into FMAs ------------------------------------

DRPOSE_HD inline double add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

DRPOSE_HD inline double sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

DRPOSE_HD inline double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

DRPOSE_HD inline double divide(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

DRPOSE_HD inline bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

DRPOSE_HD inline double min_d(double a, double b) { return b < a ? b : a; }
DRPOSE_HD inline double max_d(double a, double b) { return b > a ? b : a; }

// ---- pixels ---------------------------------------------------------------------------------

// NDC coordinate of the centre of pixel i of n: (2i + 1) / n - 1.
DRPOSE_HD inline double pixel_centre(int64_t i, int64_t n) {
  return sub(divide(add(mul(2.0, static_cast<double>(i)), 1.0), static_cast<double>(n)), 1.0);
}

// Pixel index range [lo, hi] whose centres (2i + 1) / n - 1 may fall in [a, b]: exact up to a
// 1e-9 pixel margin against rounding (coverage itself is decided by the edge functions).
DRPOSE_HD inline void pixel_range(double a, double b, int64_t n, int64_t& lo, int64_t& hi) {
  const double scale = static_cast<double>(n);
  const double fa = ceil(sub(sub(mul(mul(add(a, 1.0), 0.5), scale), 0.5), 1e-9));
  const double fb = floor(add(sub(mul(mul(add(b, 1.0), 0.5), scale), 0.5), 1e-9));
  lo = static_cast<int64_t>(max_d(fa, 0.0));
  hi = static_cast<int64_t>(min_d(fb, scale - 1.0));
}

// Whether the three vertex indices of a triangle name vertices of a (V, 4) array.
DRPOSE_HD inline bool valid_triangle(const int32_t* v, int64_t num_vertices) {
  return v[0] >= 0 && v[0] < num_vertices && v[1] >= 0 && v[1] < num_vertices && v[2] >= 0 &&
         v[2] < num_vertices;
}

// ---- per triangle -----------------------------------------------------------------------------

struct TriangleSetup {
  double A[3], B[3], C[3];  // e_k = (C_k + A_k px) + B_k py
  double z[3], w[3];
  int64_t row0, row1, col0, col1;  // inclusive pixel box; row0 > row1 when nothing to draw
};

DRPOSE_HD inline bool drawable(const TriangleSetup& s) {
  return s.row0 <= s.row1 && s.col0 <= s.col1;
}

DRPOSE_HD inline TriangleSetup empty_setup() {
  TriangleSetup s{};
  s.row0 = 1;
  s.row1 = 0;
  s.col0 = 1;
  s.col1 = 0;
  return s;
}

// Edge coefficients and pixel box of the triangle (p0, p1, p2), each a clip-space (x, y, z, w).
// Non-finite and entirely-behind-the-camera triangles get an empty box.
template <typename scalar_t>
DRPOSE_HD inline TriangleSetup setup_triangle(const scalar_t* p0, const scalar_t* p1,
                                              const scalar_t* p2, int64_t height, int64_t width) {
  TriangleSetup s = empty_setup();
  const double x[3] = {static_cast<double>(p0[0]), static_cast<double>(p1[0]),
                       static_cast<double>(p2[0])};
  const double y[3] = {static_cast<double>(p0[1]), static_cast<double>(p1[1]),
                       static_cast<double>(p2[1])};
  const double z[3] = {static_cast<double>(p0[2]), static_cast<double>(p1[2]),
                       static_cast<double>(p2[2])};
  const double w[3] = {static_cast<double>(p0[3]), static_cast<double>(p1[3]),
                       static_cast<double>(p2[3])};
  for (int k = 0; k < 3; ++k) {
    if (!is_finite(x[k]) || !is_finite(y[k]) || !is_finite(z[k]) || !is_finite(w[k])) return s;
    s.z[k] = z[k];
    s.w[k] = w[k];
  }
  if (w[0] <= 0.0 && w[1] <= 0.0 && w[2] <= 0.0) return s;  // entirely behind the camera
  for (int k = 0; k < 3; ++k) {
    const int i = (k + 1) % 3, j = (k + 2) % 3;
    s.C[k] = sub(mul(x[i], y[j]), mul(x[j], y[i]));
    s.A[k] = sub(mul(y[i], w[j]), mul(y[j], w[i]));
    s.B[k] = sub(mul(x[j], w[i]), mul(x[i], w[j]));
  }
  const double w_ext = static_cast<double>(width), h_ext = static_cast<double>(height);
  if (w[0] > 0.0 && w[1] > 0.0 && w[2] > 0.0) {
    double xmin = divide(x[0], w[0]), xmax = xmin, ymin = divide(y[0], w[0]), ymax = ymin;
    for (int k = 1; k < 3; ++k) {
      const double sx = divide(x[k], w[k]), sy = divide(y[k], w[k]);
      xmin = min_d(xmin, sx);
      xmax = max_d(xmax, sx);
      ymin = min_d(ymin, sy);
      ymax = max_d(ymax, sy);
    }
    if (xmax < sub(-1.0, divide(2.0, w_ext)) || xmin > add(1.0, divide(2.0, w_ext)) ||
        ymax < sub(-1.0, divide(2.0, h_ext)) || ymin > add(1.0, divide(2.0, h_ext)))
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

// ---- per pixel ----------------------------------------------------------------------------------

struct Fragment {
  double u, v, depth;
};

// The fragment of triangle s at the NDC point (px, py): false when the point is outside the
// triangle or outside the near/far planes.
DRPOSE_HD inline bool shade(const TriangleSetup& s, double px, double py, Fragment& f) {
  const double e0 = add(add(s.C[0], mul(s.A[0], px)), mul(s.B[0], py));
  const double e1 = add(add(s.C[1], mul(s.A[1], px)), mul(s.B[1], py));
  const double e2 = add(add(s.C[2], mul(s.A[2], px)), mul(s.B[2], py));
  const double S = add(add(e0, e1), e2);
  const bool inside = S > 0.0 ? (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0)
                              : (S < 0.0 && e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0);
  if (!inside) return false;
  const double Z = divide(add(add(mul(e0, s.z[0]), mul(e1, s.z[1])), mul(e2, s.z[2])), S);
  const double W = divide(add(add(mul(e0, s.w[0]), mul(e1, s.w[1])), mul(e2, s.w[2])), S);
  if (!(W > 0.0 && Z >= -W && Z <= W)) return false;
  f.u = divide(e0, S);
  f.v = divide(e1, S);
  f.depth = divide(Z, W);
  return true;
}

// A key whose unsigned order is the order of the (finite) depths, -0 and +0 equal:
// depth_key(a) < depth_key(b) exactly when a < b. No key equals kNoDepth.
constexpr uint64_t kNoDepth = ~uint64_t(0);

DRPOSE_HD inline uint64_t depth_key(double depth) {
  const double d = depth == 0.0 ? 0.0 : depth;  // -0 -> +0
  uint64_t bits;
#if defined(__CUDA_ARCH__)
  bits = static_cast<uint64_t>(__double_as_longlong(d));
#else
  std::memcpy(&bits, &d, sizeof(bits));
#endif
  const uint64_t sign = uint64_t(1) << 63;
  return (bits & sign) ? ~bits : (bits | sign);
}

// Gradient of the loss w.r.t. the clip-space (x, y, w) of a triangle's vertices from (g_u, g_v)
// at the NDC point (px, py): see the header comment. u and v are recomputed from the vertices.
DRPOSE_HD inline void barycentric_backward(const double x[3], const double y[3],
                                           const double w[3], double px, double py, double gu,
                                           double gv, double gx[3], double gy[3], double gw[3]) {
  double X[3], Y[3], e[3], ge[3];
  for (int k = 0; k < 3; ++k) {
    X[k] = x[k] - px * w[k];
    Y[k] = y[k] - py * w[k];
  }
  for (int k = 0; k < 3; ++k) {
    const int i = (k + 1) % 3, j = (k + 2) % 3;
    e[k] = X[i] * Y[j] - X[j] * Y[i];
  }
  const double S = (e[0] + e[1]) + e[2];
  const double u = e[0] / S, v = e[1] / S;
  const double common = -(gu * u + gv * v);
  ge[0] = (common + gu) / S;
  ge[1] = (common + gv) / S;
  ge[2] = common / S;
  for (int i = 0; i < 3; ++i) {
    const int next = (i + 1) % 3, after = (i + 2) % 3, prev = (i + 2) % 3;
    gx[i] = ge[prev] * Y[next] - ge[next] * Y[after];
    gy[i] = ge[next] * X[after] - ge[prev] * X[next];
    gw[i] = -px * gx[i] - py * gy[i];
  }
}

// ---- interpolate --------------------------------------------------------------------------------

// u a_0 + v a_1 + (1 - u - v) a_2, in the reference's order.
template <typename T>
DRPOSE_HD inline T interpolate_value(T u, T v, T a0, T a1, T a2) {
  return (u * a0 + v * a1) + ((T(1) - u) - v) * a2;
}

// Gradients of interpolate_value given the upstream gradient g: d/da_0..2 into ga, and the
// contributions g a_0 - g a_2, g a_1 - g a_2 to d/du, d/dv.
template <typename T>
DRPOSE_HD inline void interpolate_backward(T u, T v, T a0, T a1, T a2, T g, T ga[3], T& gu,
                                           T& gv) {
  ga[0] = u * g;
  ga[1] = v * g;
  ga[2] = ((T(1) - u) - v) * g;
  gu = g * a0 - g * a2;
  gv = g * a1 - g * a2;
}

// Accumulation type of an attribute type: double for double, float for float, half, bfloat16.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// A covered rast pixel's triangle (-1 for background), its corners' attribute rows in
// image_attr (V, A), and (u, v) rounded to the attribute's dtype first, as the reference does.
template <typename attr_t>
struct PixelCorners {
  int64_t triangle;
  const attr_t* a[3];
  typename Acc<attr_t>::type u, v;
};

// Triangle index of a rast pixel from its id channel (triangle_id + 1, 0 = background): -1 for
// background, and also for ids outside [1, T] (the callers check those beforehand).
template <typename T>
DRPOSE_HD inline int64_t triangle_of(T id_channel, int64_t num_triangles) {
  const double id = static_cast<double>(id_channel);
  if (!(id >= 1.0 && id <= static_cast<double>(num_triangles))) return -1;
  return static_cast<int64_t>(id) - 1;
}

template <typename attr_t, typename rast_t>
DRPOSE_HD inline PixelCorners<attr_t> corners_of(const rast_t* pixel, const attr_t* image_attr,
                                                 const int32_t* tri, int64_t num_triangles,
                                                 int64_t num_vertices, int64_t channels) {
  using acc_t = typename Acc<attr_t>::type;
  PixelCorners<attr_t> p;
  p.triangle = triangle_of(pixel[3], num_triangles);
  if (p.triangle < 0) return p;
  const int32_t* v = tri + 3 * p.triangle;
  if (!valid_triangle(v, num_vertices)) {  // checked by the callers; never read out of bounds
    p.triangle = -1;
    return p;
  }
  for (int k = 0; k < 3; ++k) p.a[k] = image_attr + v[k] * channels;
  p.u = static_cast<acc_t>(static_cast<attr_t>(pixel[0]));
  p.v = static_cast<acc_t>(static_cast<attr_t>(pixel[1]));
  return p;
}

}  // namespace raster
}  // namespace drpose
