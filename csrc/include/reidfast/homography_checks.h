// Argument checks of the homography warp kernels, shared by the CPU and CUDA registrations (host code only).
#pragma once
#include <ATen/ATen.h>
#include <array>
#include <cstdint>
#include <limits>
#include <string>

#include "reidfast/grid_math.h"
#include "reidfast/shape_str.h"

namespace reidfast {
namespace homography {

inline int parse_padding(c10::string_view name) {
  if (name == "zeros") return grid::kZeros;
  if (name == "border") return grid::kBorder;
  if (name == "reflection") return grid::kReflection;
  TORCH_CHECK_VALUE(false, "homography_warp: padding_mode must be one of 'zeros', 'border', 'reflection', got '",
                    std::string(name), "'");
  return grid::kZeros;
}

// Coordinates are computed in float64 for float64 images, float32 otherwise; H must already be in that dtype.
inline c10::ScalarType coord_type(c10::ScalarType image_type) {
  return image_type == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_inputs(const at::Tensor& img, const at::Tensor& H, c10::DeviceType device) {
  TORCH_CHECK_VALUE(img.dim() == 4, "homography_warp: img must be 4-D (N, C, H, W), got shape ", shape_str(img));
  TORCH_CHECK_TYPE(img.scalar_type() == at::kFloat || img.scalar_type() == at::kDouble ||
                       img.scalar_type() == at::kHalf || img.scalar_type() == at::kBFloat16,
                   "homography_warp: img must be float32, float64, float16 or bfloat16, got ", img.scalar_type());
  TORCH_CHECK(img.device().type() == device, "homography_warp: img is on ", img.device(),
              " but this kernel runs on ", c10::DeviceTypeName(device));
  TORCH_CHECK_VALUE(H.dim() == 3 && H.size(0) == img.size(0) && H.size(1) == 3 && H.size(2) == 3,
                    "homography_warp: H must have shape (N, 3, 3) = (", img.size(0), ", 3, 3), got ", shape_str(H));
  const auto want = coord_type(img.scalar_type());
  TORCH_CHECK_TYPE(H.scalar_type() == want, "homography_warp: H must be ", want, " for img of dtype ",
                   img.scalar_type(), ", got ", H.scalar_type());
  TORCH_CHECK(H.device() == img.device(), "homography_warp: H is on ", H.device(), " but img is on ", img.device());
  // grid_sample's rule: an image without pixels has nothing to sample, not even its padding
  TORCH_CHECK_VALUE(img.size(2) > 0 && img.size(3) > 0,
                    "homography_warp: img must have a positive height and width, got shape ", shape_str(img));
  // tap indices are 32-bit (grid_math.h)
  TORCH_CHECK_VALUE(img.size(2) < (int64_t{1} << 30) && img.size(3) < (int64_t{1} << 30),
                    "homography_warp: img height and width must be below 2^30, got ", shape_str(img));
}

inline void check_out_size(int64_t out_h, int64_t out_w) {
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, "homography_warp: out_size must be positive, got (", out_h, ", ",
                    out_w, ")");
}

// Whether every tap offset within a channel plane (row stride sh, column stride sw) fits a 32-bit integer, also
// those computed (then discarded) for taps outside the image: corner indices reach size + 1 (grid_math.h), the far
// corner adds one more row and column. Both kernels then use 32-bit offsets (fewer instructions per tap).
inline bool plane_fits_int32(int64_t in_h, int64_t in_w, int64_t sh, int64_t sw) {
  return (in_h + 2) * sh + (in_w + 2) * sw < std::numeric_limits<int32_t>::max();
}

// Layout rule of every reidfast image kernel (see adain_checks.h): channels_last only when img is exactly that.
inline at::MemoryFormat layout_of(const at::Tensor& img) {
  return img.is_contiguous(at::MemoryFormat::ChannelsLast) && !img.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                   : at::MemoryFormat::Contiguous;
}

inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& img) {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == img.size(0) && grad_out.size(1) == img.size(1),
                    "homography_warp_backward: grad_out must be (N, C, Hout, Wout) with N, C of img ", shape_str(img),
                    ", got ", shape_str(grad_out));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == img.scalar_type(),
                   "homography_warp_backward: grad_out must have img's dtype ", img.scalar_type(), ", got ",
                   grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == img.device(), "homography_warp_backward: grad_out is on ", grad_out.device(),
              " but img is on ", img.device());
}

// The host-side preparation of both registrations (CPU and CUDA): checks, contiguous operands in the image's
// layout, the output allocated. `done` is true when nothing is left to compute (an empty output).
struct ForwardArgs {
  at::Tensor img, H, out;
  int padding;
  bool done;
};

inline ForwardArgs prepare_forward(const at::Tensor& img, const at::Tensor& H, int64_t out_h, int64_t out_w,
                                   c10::string_view padding_mode, c10::DeviceType device) {
  check_inputs(img, H, device);
  check_out_size(out_h, out_w);
  ForwardArgs a;
  a.padding = parse_padding(padding_mode);
  const auto layout = layout_of(img);
  a.img = img.contiguous(layout);
  a.H = H.contiguous();
  a.out = at::empty({img.size(0), img.size(1), out_h, out_w}, a.img.options().memory_format(layout));
  a.done = a.out.numel() == 0;
  return a;
}

// grad_img accumulates in the coordinate dtype (float32 for half/bfloat16 images); finish_grad_img casts it.
// `empty` is true when no kernel needs to run (nothing requested, or no output point).
struct BackwardArgs {
  at::Tensor grad_out, img, H, grad_img_acc;
  int padding;
  bool need_img, need_h, empty;
};

inline BackwardArgs prepare_backward(const at::Tensor& grad_out, const at::Tensor& img, const at::Tensor& H,
                                     c10::string_view padding_mode, std::array<bool, 2> output_mask,
                                     c10::DeviceType device) {
  check_inputs(img, H, device);
  check_grad_out(grad_out, img);
  BackwardArgs a;
  a.padding = parse_padding(padding_mode);
  a.need_img = output_mask[0];
  a.need_h = output_mask[1];
  const auto layout = layout_of(img);
  a.img = img.contiguous(layout);
  a.grad_out = grad_out.contiguous(layout);
  a.H = H.contiguous();
  if (a.need_img) a.grad_img_acc = at::zeros_like(a.img, a.img.options().dtype(coord_type(img.scalar_type())), layout);
  a.empty = !(a.need_img || a.need_h) || grad_out.numel() == 0;
  return a;
}

inline at::Tensor finish_grad_img(const BackwardArgs& a) {
  return a.need_img ? a.grad_img_acc.to(a.img.scalar_type()) : at::empty({0}, a.img.options());
}

}  // namespace homography
}  // namespace reidfast
