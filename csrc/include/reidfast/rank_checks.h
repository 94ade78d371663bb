// Host side of the ranking kernels, shared by the CPU and CUDA registrations: argument checks and the inputs made
// ready (checked, contiguous) with their outputs allocated.
#pragma once
#include <ATen/ATen.h>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>

#include "reidfast/rank_math.h"
#include "reidfast/shape_str.h"

namespace reidfast {
namespace rank {

inline int parse_ap_mode(c10::string_view name) {
  if (name == "torchreid") return kTorchreid;
  if (name == "market") return kMarket;
  TORCH_CHECK_VALUE(false, "rank_queries: ap_mode must be 'torchreid' or 'market', got '", std::string(name), "'");
  return kTorchreid;
}

// The setting of one of the kernels' switches (environment variables that force one of two ways, for the benchmark's
// comparisons and the tests of both): 0 when unset or empty, 1 or 2 for the first or second of its values, and an
// error naming the variable for anything else, rather than a typo silently timing the default. Read per call (an
// environment lookup, no allocation).
inline int env_switch(const char* name, const char* first, const char* second) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0') return 0;
  if (std::strcmp(value, first) == 0) return 1;
  if (std::strcmp(value, second) == 0) return 2;
  TORCH_CHECK_VALUE(false, name, " must be unset, '", first, "' or '", second, "', got '", value, "'");
  return 0;
}

// Whether the counting pass may use the distance buckets (rank_math.h, MatchBuckets). REIDFAST_RANK_COUNT=search
// sends every row through the binary search that rows without usable buckets take anyway (=buckets: the default):
// bench/ops_rank.py times both counting passes in one run, and the tests check both.
inline bool buckets_allowed() { return env_switch("REIDFAST_RANK_COUNT", "buckets", "search") != 2; }

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

struct RankArgs {
  int ap_mode;
  bool allow_buckets;
  int64_t num_q, num_g;
  int64_t row_stride;  // elements from one row of dist to the next (>= num_g: rows may be padded)
  at::Tensor dist, q_pids, q_camids, g_pids, g_camids;
  at::Tensor ap, inp, first_hit, num_matches;  // outputs, (Q,) each

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> outputs() const {
    return {ap, inp, first_hit, num_matches};
  }
};

inline RankArgs prepare(const at::Tensor& dist, const at::Tensor& q_pids, const at::Tensor& q_camids,
                        const at::Tensor& g_pids, const at::Tensor& g_camids, c10::string_view ap_mode,
                        c10::DeviceType device) {
  check_inputs(dist, q_pids, q_camids, g_pids, g_camids, device);
  RankArgs a;
  a.ap_mode = parse_ap_mode(ap_mode);
  a.allow_buckets = buckets_allowed();
  // Rows may be padded (row stride above G) as long as a row's items are adjacent: rank_eval's feature tiles pad
  // their rows so that the GEMM writes aligned rows, and are ranked through a view without a copy.
  const bool rows_dense = dist.size(1) <= 1 || dist.stride(1) == 1;
  const bool rows_apart = dist.size(0) <= 1 || dist.stride(0) >= dist.size(1);
  a.dist = rows_dense && rows_apart ? dist : dist.contiguous();
  a.row_stride = a.dist.size(0) <= 1 ? a.dist.size(1) : a.dist.stride(0);
  a.q_pids = q_pids.contiguous();
  a.q_camids = q_camids.contiguous();
  a.g_pids = g_pids.contiguous();
  a.g_camids = g_camids.contiguous();
  a.num_q = dist.size(0);
  a.num_g = dist.size(1);
  const auto index_opts = dist.options().dtype(at::kLong);
  a.ap = at::empty({a.num_q}, dist.options().dtype(at::kDouble));
  a.inp = at::empty({a.num_q}, dist.options().dtype(at::kDouble));
  a.first_hit = at::empty({a.num_q}, index_opts);
  a.num_matches = at::empty({a.num_q}, index_opts);
  return a;
}

// rank_summary's inputs: rank_queries' four outputs, (Q,) each, on `device`; max_rank >= 1. Returns the output,
// uninitialized, of max_rank + kSummaryTail float64 entries.
inline at::Tensor prepare_summary(const at::Tensor& ap, const at::Tensor& inp, const at::Tensor& first_hit,
                                  const at::Tensor& num_matches, int64_t max_rank, c10::DeviceType device) {
  const std::pair<const at::Tensor*, const char*> inputs[] = {
      {&ap, "ap"}, {&inp, "inp"}, {&first_hit, "first_hit"}, {&num_matches, "num_matches"}};
  for (const auto& [t, name] : inputs) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == ap.size(0), "rank_summary: ", name, " must have shape (",
                      ap.size(0), "), like ap, got ", shape_str(*t));
    TORCH_CHECK(t->device().type() == device && t->device() == ap.device(), "rank_summary: ", name, " is on ",
                t->device(), " but this kernel runs on ", ap.device());
    TORCH_CHECK(t->is_contiguous(), "rank_summary: ", name, " must be contiguous");
  }
  TORCH_CHECK_TYPE(ap.scalar_type() == at::kDouble && inp.scalar_type() == at::kDouble,
                   "rank_summary: ap and inp must be float64, got ", ap.scalar_type(), " and ", inp.scalar_type());
  TORCH_CHECK_TYPE(first_hit.scalar_type() == at::kLong && num_matches.scalar_type() == at::kLong,
                   "rank_summary: first_hit and num_matches must be int64, got ", first_hit.scalar_type(), " and ",
                   num_matches.scalar_type());
  TORCH_CHECK_VALUE(max_rank >= 1, "rank_summary: max_rank must be >= 1, got ", max_rank);
  return at::empty({max_rank + kSummaryTail}, ap.options());  // every entry is written
}

}  // namespace rank
}  // namespace reidfast
