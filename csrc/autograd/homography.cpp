// Autograd for homography_warp_forward, in C++ so that a differentiable call costs one dispatcher round trip (a
// Python autograd kernel adds tens of microseconds per call, which at SA-GAN's sizes is comparable to the GPU
// kernels themselves) and so that C++ users of the library get gradients too. Device independent: the forward and
// backward ops dispatch to the CPU or CUDA kernels. The Triton ops keep the Python registration
// (reidfast/ops/_registration.py), which computes the same gradients.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>

namespace reidfast {
namespace homography {
namespace {

at::Tensor call_forward(const at::Tensor& img, const at::Tensor& H, int64_t out_h, int64_t out_w,
                        c10::string_view padding_mode, bool align_corners) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reidfast::homography_warp_forward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, c10::string_view,
                                         bool)>();
  return op.call(img, H, out_h, out_w, padding_mode, align_corners);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_out, const at::Tensor& img,
                                                 const at::Tensor& H, c10::string_view padding_mode,
                                                 bool align_corners, std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("reidfast::homography_warp_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, c10::string_view, bool,
                                                                 std::array<bool, 2>)>();
  return op.call(grad_out, img, H, padding_mode, align_corners, output_mask);
}

class HomographyWarpFunction : public torch::autograd::Function<HomographyWarpFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& img, const at::Tensor& H,
                            int64_t out_h, int64_t out_w, c10::string_view padding_mode, bool align_corners) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({img, H});
    ctx->saved_data["padding_mode"] = std::string(padding_mode);
    ctx->saved_data["align_corners"] = align_corners;
    return call_forward(img, H, out_h, out_w, padding_mode, align_corners);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    // Only the gradients autograd asks for are computed (the kernels skip the grad_img scatter when img is a
    // real image, the common case in SA-GAN's localization networks).
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    auto [grad_img, grad_H] = call_backward(grad_outputs[0], saved[0], saved[1],
                                            ctx->saved_data["padding_mode"].toStringRef(),
                                            ctx->saved_data["align_corners"].toBool(), mask);
    return {mask[0] ? grad_img : at::Tensor(), mask[1] ? grad_H : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

// The backward op is differentiable only once: a second derivative (create_graph through the warp) gets a clear
// error instead of a silently disconnected graph.
class HomographyWarpBackwardFunction : public torch::autograd::Function<HomographyWarpBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext*, const at::Tensor& grad_out,
                                                const at::Tensor& img, const at::Tensor& H,
                                                c10::string_view padding_mode, bool align_corners,
                                                std::array<bool, 2> output_mask) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [grad_img, grad_H] = call_backward(grad_out, img, H, padding_mode, align_corners, output_mask);
    return {grad_img, grad_H};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, "homography_warp: double backward (a gradient of its gradient) is not supported");
  }
};

at::Tensor homography_warp_forward_autograd(const at::Tensor& img, const at::Tensor& H, int64_t out_h, int64_t out_w,
                                            c10::string_view padding_mode, bool align_corners) {
  return HomographyWarpFunction::apply(img, H, out_h, out_w, padding_mode, align_corners);
}

std::tuple<at::Tensor, at::Tensor> homography_warp_backward_autograd(const at::Tensor& grad_out,
                                                                     const at::Tensor& img, const at::Tensor& H,
                                                                     c10::string_view padding_mode,
                                                                     bool align_corners,
                                                                     std::array<bool, 2> output_mask) {
  auto grads = HomographyWarpBackwardFunction::apply(grad_out, img, H, padding_mode, align_corners, output_mask);
  return {grads[0], grads[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, Autograd, m) {
  m.impl("homography_warp_forward", &homography_warp_forward_autograd);
  m.impl("homography_warp_backward", &homography_warp_backward_autograd);
}

}  // namespace homography
}  // namespace reidfast
