// Per-element math of the fused AdaIN op, written once for the CPU and CUDA kernels.
//
//   z = (x - mean) * rstd * weight + bias      rstd = 1 / sqrt(var + eps), biased var over H*W
//   y = act(z) + residual
//
// Forward computes z = (x - mean) * scale + bias with scale = rstd * weight. Folding the mean into the bias
// (x * scale + shift) would save a subtraction but cancels catastrophically when |mean| >> std.
// Backward, with g = dy * act'(z) and xhat = (x - mean) * rstd, over a row of n = H*W elements:
//   dbias = sum(g)      dweight = sum(g * xhat)
//   dx    = rstd * weight * (g - dbias / n - xhat * dweight / n)
//   dresidual = dy
#pragma once
#include <c10/macros/Macros.h>

namespace reidfast {
namespace adain {

// Activation codes; the string names live in the schema and are parsed once per call.
enum Activation : int { kNone = 0, kRelu = 1, kLeakyRelu = 2 };

// Both are written with a 0/1 mask instead of branches so that CPU loops vectorize; the mask form is exact:
// m + (1 - m) * slope is 1 or slope, never a rounded blend. At z == 0 the derivative follows PyTorch's own
// backward formulas (relu passes 0, leaky_relu passes negative_slope), so gradients match the reference exactly.
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T z, int activation, T negative_slope) {
  const T m = static_cast<T>(z > T(0));
  if (activation == kRelu) return m;
  if (activation == kLeakyRelu) return m + (T(1) - m) * negative_slope;
  return T(1);
}

template <typename T>
C10_HOST_DEVICE inline T activate(T z, int activation, T negative_slope) {
  if (activation == kNone) return z;
  return z * activation_grad(z, activation, negative_slope);
}

// Row statistics and style -> the per-row constants of the forward pass.
template <typename T>
struct RowAffine {
  T mean;
  T scale;  // rstd * weight
  T bias;
};

template <typename T>
C10_HOST_DEVICE inline RowAffine<T> row_affine(T mean, T rstd, T weight, T bias) {
  return {mean, rstd * weight, bias};
}

template <typename T>
C10_HOST_DEVICE inline T forward_element(T x, RowAffine<T> a, int activation, T negative_slope) {
  return activate((x - a.mean) * a.scale + a.bias, activation, negative_slope);
}

// Gradient reaching z (before the activation) for one element; also returns xhat for the reductions.
template <typename T>
C10_HOST_DEVICE inline T grad_preactivation(T dy, T x, T mean, T rstd, T weight, T bias, int activation,
                                            T negative_slope, T* xhat_out) {
  const T xhat = (x - mean) * rstd;
  *xhat_out = xhat;
  return dy * activation_grad(xhat * weight + bias, activation, negative_slope);
}

template <typename T>
C10_HOST_DEVICE inline T grad_input(T g, T xhat, T rstd, T weight, T mean_g, T mean_g_xhat) {
  return rstd * weight * (g - mean_g - xhat * mean_g_xhat);
}

}  // namespace adain
}  // namespace reidfast
