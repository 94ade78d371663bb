// Shapes in argument-check messages, for every op's checks (host code only).
#pragma once
#include <ATen/ATen.h>
#include <string>

namespace reidfast {

// "(2, 3)". Shapes are formatted here rather than by streaming t.sizes() into TORCH_CHECK: on the GPU machine's
// torch 2.11 build a failing check whose message streamed an IntArrayRef crashed the process.
inline std::string shape_str(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

}  // namespace reidfast
