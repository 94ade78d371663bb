// Argument checks of the ranking kernels, shared by the CPU and CUDA registrations (host code only).
#pragma once
#include <ATen/ATen.h>
#include <string>

#include "reidfast/rank_math.h"

namespace reidfast {
namespace rank {

inline int parse_ap_mode(c10::string_view name) {
  if (name == "torchreid") return kTorchreid;
  if (name == "market") return kMarket;
  TORCH_CHECK_VALUE(false, "rank_queries: ap_mode must be 'torchreid' or 'market', got '", std::string(name), "'");
  return kTorchreid;
}

// "(2, 3)". Shapes are formatted here rather than by streaming t.sizes() into TORCH_CHECK: on the GPU machine's
// torch 2.11 build a message that streams an IntArrayRef crashed the process (seen for adain's checks as well).
inline std::string shape_str(const at::Tensor& t) {
  std::string out = "(";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + ")";
}

inline void check_label(const at::Tensor& t, const char* name, int64_t length, const at::Tensor& dist) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == length, "rank_queries: ", name, " must have shape (", length,
                    "), got ", shape_str(t));
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, "rank_queries: ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.device() == dist.device(), "rank_queries: ", name, " is on ", t.device(), " but dist is on ",
              dist.device());
}

// dist (Q, G) float32/float64; q_pids, q_camids (Q,) and g_pids, g_camids (G,) int32, all on `device`.
inline void check_inputs(const at::Tensor& dist, const at::Tensor& q_pids, const at::Tensor& q_camids,
                         const at::Tensor& g_pids, const at::Tensor& g_camids, c10::DeviceType device) {
  TORCH_CHECK_VALUE(dist.dim() == 2, "rank_queries: dist must be 2-D (Q, G), got shape ", shape_str(dist));
  TORCH_CHECK_TYPE(dist.scalar_type() == at::kFloat || dist.scalar_type() == at::kDouble,
                   "rank_queries: dist must be float32 or float64, got ", dist.scalar_type());
  TORCH_CHECK(dist.device().type() == device, "rank_queries: dist is on ", dist.device(),
              " but this kernel runs on ", c10::DeviceTypeName(device));
  TORCH_CHECK_VALUE(dist.size(1) < (int64_t(1) << 31), "rank_queries: at most 2^31 - 1 gallery items, got ",
                    dist.size(1));
  check_label(q_pids, "q_pids", dist.size(0), dist);
  check_label(q_camids, "q_camids", dist.size(0), dist);
  check_label(g_pids, "g_pids", dist.size(1), dist);
  check_label(g_camids, "g_camids", dist.size(1), dist);
}

}  // namespace rank
}  // namespace reidfast
