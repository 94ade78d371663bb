// Per-point math of the homography warp, written once for the CPU and CUDA kernels (the Triton kernels and
// reidfast/ops/reference.py spell out the same rule).
//
// H (row-major 3x3) maps an output normalized coordinate b = (x, y, 1) to
//   (u, v, w) = H b,   w' = safe_denominator(w),   g = (clamp(u / w', -kMaxCoord, kMaxCoord),
//                                                      clamp(v / w', -kMaxCoord, kMaxCoord))
// safe_denominator keeps the sign of w (w == 0 counts as positive) and raises |w| to at least kMinDenominator, so
// a point at or near the horizon maps far outside the image (it samples the padding) instead of producing Inf or
// NaN; the clamp to +-kMaxCoord bounds what such points produce. d(w')/dw = 0 where |w| was raised, and
// d(g)/d(u, v, w) = 0 where the clamp acts.
//
// Gradient in H, given dL/dg = (Lx, Ly) at one point (zero where clamped):
//   dL/dH[0][k] = Lx / w' * b[k]
//   dL/dH[1][k] = Ly / w' * b[k]
//   dL/dH[2][k] = -(Lx * gx + Ly * gy) / w' * b[k]      (0 where |w| < kMinDenominator)
// so each point adds the outer product (a0, a1, a2) x (x, y, 1); kernels accumulate the three-vector
// coefficients weighted by x, y, 1 (9 sums per sample).
#pragma once
#include <c10/macros/Macros.h>

namespace reidfast {
namespace homography {

constexpr double kMinDenominator = 1e-6;
constexpr double kMaxCoord = 1e6;

template <typename T>
struct Projected {
  T gx, gy;      // normalized input coordinates
  T inv_w;       // 1 / w'
  bool w_live;   // false where |w| was raised to kMinDenominator (no gradient through w)
  bool gx_live;  // false where gx was clamped
  bool gy_live;
};

// The projection, one output per quantity with the flags as 0/1 in T (project() packs them into a Projected).
// Scalars, no struct, and bitwise & instead of short-circuit &&: the CPU kernel's per-row loop over this function
// vectorizes.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE void project_parts(const T* h, T x, T y, T* gx_out, T* gy_out, T* inv_w_out,
                                                     T* w_live_out, T* gx_live_out, T* gy_live_out) {
  const T u = h[0] * x + h[1] * y + h[2];
  const T v = h[3] * x + h[4] * y + h[5];
  T w = h[6] * x + h[7] * y + h[8];
  const T eps = static_cast<T>(kMinDenominator);
  const bool w_live = !((w < eps) & (w > -eps));
  if (!w_live) w = w < T(0) ? -eps : eps;
  const T inv_w = T(1) / w;
  const T lim = static_cast<T>(kMaxCoord);
  const T gx = u * inv_w, gy = v * inv_w;
  *inv_w_out = inv_w;
  *w_live_out = w_live ? T(1) : T(0);
  *gx_live_out = (gx >= -lim) & (gx <= lim) ? T(1) : T(0);
  *gy_live_out = (gy >= -lim) & (gy <= lim) ? T(1) : T(0);
  *gx_out = gx < -lim ? -lim : (gx > lim ? lim : gx);
  *gy_out = gy < -lim ? -lim : (gy > lim ? lim : gy);
}

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE Projected<T> project(const T* h, T x, T y) {
  T w_live, gx_live, gy_live;
  Projected<T> p;
  project_parts(h, x, y, &p.gx, &p.gy, &p.inv_w, &w_live, &gx_live, &gy_live);
  p.w_live = w_live != T(0);
  p.gx_live = gx_live != T(0);
  p.gy_live = gy_live != T(0);
  return p;
}

// A point whose projected coordinate is NaN (H holds a NaN, or an infinity that meets a 0) samples nothing: its
// output is NaN in every channel, it sends no gradient to the image, and its sample's grad_H is NaN. Kernels compute
// such a point's taps at coordinate 0 and switch them off: a NaN coordinate must not reach the tap arithmetic
// (the float-to-integer conversion of NaN is undefined). Coordinates are never infinite: project() clamps them.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE bool coordinate_is_nan(T gx, T gy) {
  return (gx != gx) | (gy != gy);
}

// The row coefficients (a0, a1, a2) of dL/dH = a x (x, y, 1) at one point, from dL/dg.
template <typename T>
C10_HOST_DEVICE inline void grad_coefficients(const Projected<T>& p, T lx, T ly, T* a) {
  if (!p.gx_live) lx = T(0);
  if (!p.gy_live) ly = T(0);
  a[0] = lx * p.inv_w;
  a[1] = ly * p.inv_w;
  a[2] = p.w_live ? -(lx * p.gx + ly * p.gy) * p.inv_w : T(0);
}

}  // namespace homography
}  // namespace reidfast
