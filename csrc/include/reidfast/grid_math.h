// Per-point math of bilinear grid sampling, written once for the CPU and CUDA kernels. It follows the semantics of
// torch.nn.functional.grid_sample(mode="bilinear") so that the fused homography warp agrees with it in values and
// gradients, borders included.
//
// Coordinate conventions (normalized <-> pixel), per axis of `size` pixels:
//   align_corners=true : -1 and +1 are the centres of the first and last pixels: p = (g + 1) / 2 * (size - 1)
//   align_corners=false: -1 and +1 are the outer edges of the first and last pixels: p = ((g + 1) * size - 1) / 2
// The output grid's base coordinates (affine_grid's convention) are the inverse map at pixel centres, with a single
// pixel mapped to 0.
//
// Padding (applied to the pixel coordinate before the bilinear taps):
//   zeros     : taps outside the image read 0 (and receive no gradient)
//   border    : the coordinate is clipped to [0, size - 1]; d/dp = 0 where it clips (also at exactly 0 or size - 1,
//               as PyTorch does)
//   reflection: the coordinate is reflected about the borders (pixel centres for align_corners=true, pixel edges
//               for false) until it lies inside, then clipped as for border
#pragma once
#include <c10/macros/Macros.h>

#include <cmath>

namespace reidfast {
namespace grid {

enum Padding : int { kZeros = 0, kBorder = 1, kReflection = 2 };

// One axis's conventions as numbers, so that a kernel can take align_corners at run time without branching on it:
//   base coordinate of pixel index i:  (2 i + base_add) / base_div - 1
//   normalized -> pixel coordinate   :  ((g + 1) * span - span_sub) * 0.5,  dp/dg = span * 0.5
// align_corners=true : base_add 0, base_div size - 1, span size - 1, span_sub 0
// align_corners=false: base_add 1, base_div size,     span size,     span_sub 1
// a single pixel (size <= 1) has base coordinate 0: base_add = base_div = 1.
// These are the conventions' formulas above, rounded as written there: adding or subtracting 0 and multiplying by 0.5
// are exact, and (x * s) * 0.5 == x * (s * 0.5) in binary floating point away from underflow; the division is
// carried out by the reciprocal base_inv and one correction (quotient_by_reciprocal), which gives the IEEE
// quotient (the C++ test program checks both against the written formulas, every index of every size to 8192).
// The (size, align_corners) overloads below call these.
template <typename T>
struct AxisMap {
  T base_add, base_div, base_inv, span, span_sub;  // base_inv: 1 / base_div, rounded to nearest
};

template <typename T>
C10_HOST_DEVICE inline AxisMap<T> axis_map(int64_t size, bool align_corners) {
  if (size <= 1) return {T(1), T(1), T(1), align_corners ? T(0) : static_cast<T>(size), align_corners ? T(0) : T(1)};
  const T div = static_cast<T>(align_corners ? size - 1 : size);
  return {align_corners ? T(0) : T(1), div, T(1) / div, div, align_corners ? T(0) : T(1)};
}

// a * b + c with one rounding, on both sides (the kernels' results must not depend on the compiler's contraction)
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T fused_multiply_add(T a, T b, T c) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    return __fmaf_rn(a, b, c);
  } else {
    return __fma_rn(a, b, c);
  }
#else
  return std::fma(a, b, c);
#endif
}

// n / d rounded to nearest, given inv = 1 / d rounded to nearest: q = n * inv is within an ulp of the quotient, and
// q + (n - q d) * inv, with the remainder exact by a fused multiply-add, is the correctly rounded quotient
// (Markstein's theorem, away from overflow and underflow). On a GPU it replaces a division, which takes a
// reciprocal, its refinement and a range check with a slow path: two per output point of the warp kernels.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T quotient_by_reciprocal(T n, T d, T inv) {
  const T q = n * inv;
  return fused_multiply_add(fused_multiply_add(-q, d, n), inv, q);
}

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T base_coordinate(int64_t i, const AxisMap<T>& a) {
  return quotient_by_reciprocal(T(2) * static_cast<T>(i) + a.base_add, a.base_div, a.base_inv) - T(1);
}

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T unnormalize(T g, const AxisMap<T>& a, T* scale) {
  *scale = a.span * T(0.5);
  return ((g + T(1)) * a.span - a.span_sub) * T(0.5);
}

// Normalized output coordinate of pixel index i of `size` (affine_grid's base grid).
template <typename T>
C10_HOST_DEVICE inline T base_coordinate(int64_t i, int64_t size, bool align_corners) {
  return base_coordinate(i, axis_map<T>(size, align_corners));
}

// Normalized -> pixel coordinate; *scale receives dp/dg.
template <typename T>
C10_HOST_DEVICE inline T unnormalize(T g, int64_t size, bool align_corners, T* scale) {
  return unnormalize(g, axis_map<T>(size, align_corners), scale);
}

template <typename T>
C10_HOST_DEVICE inline T clip(T p, int64_t size, T* grad) {
  if (p <= T(0)) {
    *grad = T(0);
    return T(0);
  }
  const T hi = static_cast<T>(size - 1);
  if (p >= hi) {
    *grad = T(0);
    return hi;
  }
  *grad = T(1);
  return p;
}

// Reflects p into [twice_low / 2, twice_high / 2] (bounds given doubled so that half-pixel edges stay integers).
template <typename T>
C10_HOST_DEVICE inline T reflect(T p, int64_t twice_low, int64_t twice_high, T* grad) {
  if (twice_low == twice_high) {
    *grad = T(0);
    return T(0);
  }
  T sign = T(1);
  const T low = static_cast<T>(twice_low) / T(2);
  const T span = static_cast<T>(twice_high - twice_low) / T(2);
  p -= low;
  if (p < T(0)) {
    sign = T(-1);
    p = -p;
  }
  const T extra = ::fmod(p, span);
  const int64_t flips = static_cast<int64_t>(::floor(p / span));
  if (flips % 2 == 0) {
    *grad = sign;
    return extra + low;
  }
  *grad = -sign;
  return span - extra + low;
}

// Applies the padding rule to a pixel coordinate; *grad receives d(result)/dp. For zeros padding the coordinate is
// also kept within [-2, size + 1]: every tap beyond that is outside the image (value 0, gradient 0) either way, and
// the bound keeps the integer tap indices far from overflow for coordinates from near-singular homographies.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T apply_padding(T p, int64_t size, int padding, bool align_corners, T* grad) {
  if (!(p == p)) {  // NaN (only from a NaN homography): sample outside the image
    *grad = T(0);
    return T(-2);
  }
  if (padding == kBorder) return clip(p, size, grad);
  if (padding == kReflection) {
    T g_reflect, g_clip;
    const T r = align_corners ? reflect(p, 0, 2 * (size - 1), &g_reflect) : reflect(p, -1, 2 * size - 1, &g_reflect);
    const T c = clip(r, size, &g_clip);
    *grad = g_reflect * g_clip;
    return c;
  }
  *grad = T(1);
  const T lo = T(-2), hi = static_cast<T>(size + 1);
  return p < lo ? lo : (p > hi ? hi : p);
}

// The four taps of bilinear interpolation at pixel coordinate (px, py): corner indices and weights.
// Tap indices are 32-bit: apply_padding bounds every coordinate to [-2, size + 1], and 32-bit integers keep the
// CPU kernel's per-row loops vectorizable (x86 has no packed float <-> 64-bit integer conversion before AVX-512).
template <typename T>
struct Taps {
  int x0, y0;  // north-west corner; the others are +1 in x and/or y
  T tx, ty;        // fractional offsets in [0, 1)
  bool in_x0, in_x1, in_y0, in_y1;
  C10_HOST_DEVICE inline T w00() const { return (T(1) - tx) * (T(1) - ty); }
  C10_HOST_DEVICE inline T w01() const { return tx * (T(1) - ty); }  // (x0 + 1, y0)
  C10_HOST_DEVICE inline T w10() const { return (T(1) - tx) * ty; }  // (x0, y0 + 1)
  C10_HOST_DEVICE inline T w11() const { return tx * ty; }
};

// floor of a finite coordinate that apply_padding has bounded to [-2, size + 1]. On the host this avoids a libm
// call (x86-64 without SSE4.1 has no floor instruction): truncate, then step down for negative non-integers.
template <typename T>
C10_HOST_DEVICE inline int floor_bounded(T p) {
#ifdef __CUDA_ARCH__
  return static_cast<int>(::floor(p));
#else
  const int i = static_cast<int>(p);
  return static_cast<T>(i) > p ? i - 1 : i;
#endif
}

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE Taps<T> bilinear_taps(T px, T py, int64_t width, int64_t height) {
  Taps<T> t;
  t.x0 = floor_bounded(px);
  t.y0 = floor_bounded(py);
  const T fx = static_cast<T>(t.x0), fy = static_cast<T>(t.y0);
  t.tx = px - fx;
  t.ty = py - fy;
  // 0 <= i < size as one unsigned comparison: no short-circuit branch, so the CPU's per-row loops vectorize
  const unsigned w = static_cast<unsigned>(width), h = static_cast<unsigned>(height);
  t.in_x0 = static_cast<unsigned>(t.x0) < w;
  t.in_x1 = static_cast<unsigned>(t.x0 + 1) < w;
  t.in_y0 = static_cast<unsigned>(t.y0) < h;
  t.in_y1 = static_cast<unsigned>(t.y0 + 1) < h;
  return t;
}

// A sampling point fully resolved: taps and d(pixel coordinate)/d(normalized coordinate) per axis, padding
// included. Both the forward and the backward kernels build it with this one function.
template <typename T>
struct SamplePoint {
  Taps<T> taps;
  T dpx_dgx, dpy_dgy;
};

// One axis of a sampling point: the pixel coordinate of normalized coordinate g after the padding rule, and
// *dp_dg, its derivative. (The CPU kernel calls it in loops of its own, which vectorize; see sample_point.)
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T padded_pixel(T g, const AxisMap<T>& axis, int64_t size, int padding,
                                                 bool align_corners, T* dp_dg) {
  T scale, pad;
  const T p = apply_padding(unnormalize(g, axis, &scale), size, padding, align_corners, &pad);
  *dp_dg = scale * pad;
  return p;
}

template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T padded_pixel(T g, int64_t size, int padding, bool align_corners, T* dp_dg) {
  return padded_pixel(g, axis_map<T>(size, align_corners), size, padding, align_corners, dp_dg);
}

// axis_x, axis_y: axis_map(width, align_corners), axis_map(height, align_corners), made once per kernel launch.
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE SamplePoint<T> sample_point(T gx, T gy, const AxisMap<T>& axis_x,
                                                              const AxisMap<T>& axis_y, int64_t width,
                                                              int64_t height, int padding, bool align_corners) {
  SamplePoint<T> s;
  const T px = padded_pixel(gx, axis_x, width, padding, align_corners, &s.dpx_dgx);
  const T py = padded_pixel(gy, axis_y, height, padding, align_corners, &s.dpy_dgy);
  s.taps = bilinear_taps(px, py, width, height);
  return s;
}

// d(interpolated value)/d(pixel coordinate) for one channel, given its corner values (0 outside).
template <typename T>
C10_HOST_DEVICE inline void interpolate_grad_xy(const Taps<T>& t, T v00, T v01, T v10, T v11, T* dx, T* dy) {
  *dx = (v01 - v00) * (T(1) - t.ty) + (v11 - v10) * t.ty;
  *dy = (v10 - v00) * (T(1) - t.tx) + (v11 - v01) * t.tx;
}

}  // namespace grid
}  // namespace reidfast
