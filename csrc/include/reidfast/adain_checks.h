// Argument checks of the AdaIN kernels, shared by the CPU and CUDA registrations (host code only).
#pragma once
#include <ATen/ATen.h>
#include <string>

#include "reidfast/adain_math.h"

namespace reidfast {
namespace adain {

inline int parse_activation(c10::string_view name) {
  if (name == "none") return kNone;
  if (name == "relu") return kRelu;
  if (name == "lrelu" || name == "leaky_relu") return kLeakyRelu;
  TORCH_CHECK_VALUE(false, "adain: activation must be one of 'none', 'relu', 'lrelu', got '",
                    std::string(name), "'");
  return kNone;
}

inline c10::ScalarType opmath_type(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Validates x (N,C,H,W) and per-sample (N,C) weight/bias in the op-math dtype.
inline void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         const c10::optional<at::Tensor>& residual, c10::DeviceType device) {
  TORCH_CHECK_VALUE(x.dim() == 4, "adain: x must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                       x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                   "adain: x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.device().type() == device, "adain: x is on ", x.device(), " but this kernel runs on ",
              c10::DeviceTypeName(device));
  const auto N = x.size(0), C = x.size(1);
  const auto want = opmath_type(x.scalar_type());
  for (const auto& pair : {std::make_pair("weight", &weight), std::make_pair("bias", &bias)}) {
    const at::Tensor& t = *pair.second;
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == N && t.size(1) == C, "adain: ", pair.first,
                      " must have shape (N, C) = (", N, ", ", C, "), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == want, "adain: ", pair.first, " must be ", want, " for x of dtype ",
                     x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "adain: ", pair.first, " is on ", t.device(), " but x is on ",
                x.device());
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK_VALUE(r.sizes() == x.sizes(), "adain: residual must have the shape of x ", x.sizes(), ", got ",
                      r.sizes());
    TORCH_CHECK_TYPE(r.scalar_type() == x.scalar_type(), "adain: residual must have x's dtype ",
                     x.scalar_type(), ", got ", r.scalar_type());
    TORCH_CHECK(r.device() == x.device(), "adain: residual is on ", r.device(), " but x is on ", x.device());
  }
}

// Kernels walk rows (n, c) of H*W elements in one of two layouts, chosen from x: channels_last when x is exactly
// that (and not also plain contiguous, as happens for C == 1 or H*W == 1), else contiguous after a copy. The fake
// kernels in Python apply the same rule, so compiled graphs see the strides the kernels produce.
inline bool use_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

inline at::MemoryFormat layout_of(const at::Tensor& x) {
  return use_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace adain
}  // namespace reidfast
