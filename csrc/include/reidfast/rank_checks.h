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

// dist (Q, G) float32/float64; q_pids, q_camids (Q,) and g_pids, g_camids (G,) int32, all on `device`.
inline void check_inputs(const at::Tensor& dist, const at::Tensor& q_pids, const at::Tensor& q_camids,
                         const at::Tensor& g_pids, const at::Tensor& g_camids, c10::DeviceType device) {
  TORCH_CHECK_VALUE(dist.dim() == 2, "rank_queries: dist must be 2-D (Q, G), got shape ", dist.sizes());
  TORCH_CHECK_TYPE(dist.scalar_type() == at::kFloat || dist.scalar_type() == at::kDouble,
                   "rank_queries: dist must be float32 or float64, got ", dist.scalar_type());
  TORCH_CHECK(dist.device().type() == device, "rank_queries: dist is on ", dist.device(),
              " but this kernel runs on ", c10::DeviceTypeName(device));
  TORCH_CHECK_VALUE(dist.size(1) < (int64_t(1) << 31), "rank_queries: at most 2^31 - 1 gallery items, got ",
                    dist.size(1));
  const struct {
    const char* name;
    const at::Tensor* t;
    int64_t length;
  } labels[] = {{"q_pids", &q_pids, dist.size(0)},
                {"q_camids", &q_camids, dist.size(0)},
                {"g_pids", &g_pids, dist.size(1)},
                {"g_camids", &g_camids, dist.size(1)}};
  for (const auto& l : labels) {
    TORCH_CHECK_VALUE(l.t->dim() == 1 && l.t->size(0) == l.length, "rank_queries: ", l.name, " must have shape (",
                      l.length, "), got ", l.t->sizes());
    TORCH_CHECK_TYPE(l.t->scalar_type() == at::kInt, "rank_queries: ", l.name, " must be int32, got ",
                     l.t->scalar_type());
    TORCH_CHECK(l.t->device() == dist.device(), "rank_queries: ", l.name, " is on ", l.t->device(),
                " but dist is on ", dist.device());
  }
}

}  // namespace rank
}  // namespace reidfast
