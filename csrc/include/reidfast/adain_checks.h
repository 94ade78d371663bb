// Host side of the AdaIN kernels, shared by the CPU and CUDA registrations: argument checks, the layout rule, and
// the inputs made ready (checked, in the kernels' layout) with their outputs allocated.
#pragma once
#include <ATen/ATen.h>
#include <string>

#include "reidfast/adain_math.h"
#include "reidfast/shape_str.h"

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
  TORCH_CHECK_VALUE(x.dim() == 4, "adain: x must be 4-D (N, C, H, W), got shape ", shape_str(x));
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
                      " must have shape (N, C) = (", N, ", ", C, "), got ", shape_str(t));
    TORCH_CHECK_TYPE(t.scalar_type() == want, "adain: ", pair.first, " must be ", want, " for x of dtype ",
                     x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "adain: ", pair.first, " is on ", t.device(), " but x is on ",
                x.device());
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK_VALUE(r.sizes() == x.sizes(), "adain: residual must have the shape of x ", shape_str(x), ", got ",
                      shape_str(r));
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

struct ForwardArgs {
  at::MemoryFormat layout;
  int act;
  at::Tensor x, weight, bias, residual;  // residual undefined when absent
  at::Tensor y, mean, rstd;               // outputs; mean and rstd (N, C) in the op-math dtype
};

inline ForwardArgs prepare_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   const c10::optional<at::Tensor>& residual, c10::string_view activation,
                                   double eps, c10::DeviceType device) {
  check_inputs(x, weight, bias, residual, device);
  TORCH_CHECK_VALUE(eps >= 0, "adain: eps must be >= 0, got ", eps);
  ForwardArgs a;
  a.act = parse_activation(activation);
  a.layout = layout_of(x);
  a.x = x.contiguous(a.layout);
  a.weight = weight.contiguous();
  a.bias = bias.contiguous();
  if (residual.has_value()) a.residual = residual->contiguous(a.layout);
  a.y = at::empty_like(a.x, a.x.options(), a.layout);
  a.mean = at::zeros({x.size(0), x.size(1)}, weight.options());
  a.rstd = at::zeros({x.size(0), x.size(1)}, weight.options());
  return a;
}

struct BackwardArgs {
  at::MemoryFormat layout;
  int act;
  at::Tensor grad_y, x, weight, bias, mean, rstd;
  at::Tensor grad_x, grad_weight, grad_bias;  // outputs
};

inline BackwardArgs prepare_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd,
                                     c10::string_view activation, c10::DeviceType device) {
  check_inputs(x, weight, bias, c10::nullopt, device);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
                    "adain_backward: grad_y must match x in shape and dtype, got ", shape_str(grad_y), " ",
                    grad_y.scalar_type());
  for (const auto& pair : {std::make_pair("mean", &mean), std::make_pair("rstd", &rstd)}) {
    TORCH_CHECK_VALUE(pair.second->sizes() == weight.sizes() && pair.second->scalar_type() == weight.scalar_type(),
                      "adain_backward: ", pair.first, " must match weight in shape and dtype, got ",
                      shape_str(*pair.second), " ", pair.second->scalar_type());
  }
  BackwardArgs a;
  a.act = parse_activation(activation);
  a.layout = layout_of(x);
  a.x = x.contiguous(a.layout);
  a.grad_y = grad_y.contiguous(a.layout);
  a.weight = weight.contiguous();
  a.bias = bias.contiguous();
  a.mean = mean.contiguous();
  a.rstd = rstd.contiguous();
  a.grad_x = at::empty_like(a.x, a.x.options(), a.layout);
  a.grad_weight = at::zeros_like(a.weight);
  a.grad_bias = at::zeros_like(a.bias);
  return a;
}

}  // namespace adain
}  // namespace reidfast
