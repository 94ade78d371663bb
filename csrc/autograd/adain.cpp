// Autograd for adain_forward, in C++ for the reasons given in autograd/homography.cpp (one dispatcher round trip
// per differentiable call; gradients for C++ users). The Triton ops keep the Python registration
// (reidfast/ops/_registration.py), which computes the same gradients.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace reidfast {
namespace adain {
namespace {

using Stats = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Stats call_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   const std::optional<at::Tensor>& residual, c10::string_view activation, double negative_slope,
                   double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reidfast::adain_forward", "")
                       .typed<Stats(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&, c10::string_view, double, double)>();
  return op.call(x, weight, bias, residual, activation, negative_slope, eps);
}

Stats call_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                    const at::Tensor& mean, const at::Tensor& rstd, c10::string_view activation,
                    double negative_slope) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reidfast::adain_backward", "")
                       .typed<Stats(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, c10::string_view, double)>();
  return op.call(grad_y, x, weight, bias, mean, rstd, activation, negative_slope);
}

class AdainFunction : public torch::autograd::Function<AdainFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& weight, const at::Tensor& bias,
                                                const std::optional<at::Tensor>& residual,
                                                c10::string_view activation, double negative_slope, double eps) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [y, mean, rstd] = call_forward(x, weight, bias, residual, activation, negative_slope, eps);
    ctx->save_for_backward({x, weight, bias, mean, rstd});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->saved_data["has_residual"] = residual.has_value() && residual->defined();
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_y = grad_outputs[0];
    auto [grad_x, grad_weight, grad_bias] =
        call_backward(grad_y, saved[0], saved[1], saved[2], saved[3], saved[4],
                      ctx->saved_data["activation"].toStringRef(), ctx->saved_data["negative_slope"].toDouble());
    // y = ... + residual: the residual's gradient is grad_y itself, no kernel needed.
    const at::Tensor grad_residual = ctx->saved_data["has_residual"].toBool() ? grad_y : at::Tensor();
    return {grad_x, grad_weight, grad_bias, grad_residual, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// A second derivative through AdaIN gets a clear error instead of a silently disconnected graph.
class AdainBackwardFunction : public torch::autograd::Function<AdainBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const at::Tensor& grad_y,
                                                const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& bias, const at::Tensor& mean,
                                                const at::Tensor& rstd, c10::string_view activation,
                                                double negative_slope) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [grad_x, grad_weight, grad_bias] =
        call_backward(grad_y, x, weight, bias, mean, rstd, activation, negative_slope);
    return {grad_x, grad_weight, grad_bias};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, "adain: double backward (a gradient of its gradient) is not supported");
  }
};

Stats adain_forward_autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const std::optional<at::Tensor>& residual, c10::string_view activation,
                             double negative_slope, double eps) {
  auto out = AdainFunction::apply(x, weight, bias, residual, activation, negative_slope, eps);
  return {out[0], out[1], out[2]};
}

Stats adain_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd,
                              c10::string_view activation, double negative_slope) {
  auto out = AdainBackwardFunction::apply(grad_y, x, weight, bias, mean, rstd, activation, negative_slope);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, Autograd, m) {
  m.impl("adain_forward", &adain_forward_autograd);
  m.impl("adain_backward", &adain_backward_autograd);
}

}  // namespace adain
}  // namespace reidfast
