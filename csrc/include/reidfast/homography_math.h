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

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE Projected<T> project(const T* h, T x, T y) {
  Projected<T> p;
  const T u = h[0] * x + h[1] * y + h[2];
  const T v = h[3] * x + h[4] * y + h[5];
  T w = h[6] * x + h[7] * y + h[8];
  const T eps = static_cast<T>(kMinDenominator);
  p.w_live = !(w < eps && w > -eps);
  if (!p.w_live) w = w < T(0) ? -eps : eps;
  p.inv_w = T(1) / w;
  const T lim = static_cast<T>(kMaxCoord);
  T gx = u * p.inv_w, gy = v * p.inv_w;
  p.gx_live = gx >= -lim && gx <= lim;
  p.gy_live = gy >= -lim && gy <= lim;
  p.gx = gx < -lim ? -lim : (gx > lim ? lim : gx);
  p.gy = gy < -lim ? -lim : (gy > lim ? lim : gy);
  return p;
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
