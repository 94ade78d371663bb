// Per-item math of the ranking op (reidfast.ops.rank_eval), written once for the CPU and CUDA kernels.
//
// The protocol is defined in reidfast/ops/reference.py (rank_eval). The kernels never sort a row: for one query,
// with its P true matches sorted by (distance, gallery index), a kept non-match j is ordered before the k-th
// match iff fewer than k matches are ordered before j. So with hist[p] = #kept non-matches having exactly p
// matches before them (a binary search each),
//   rank_k = (k - 1) + sum_{p < k} hist[p]          (0-based position of the k-th match after junk removal)
// which costs O(G log P) per query instead of the O(G log G) of a sort.
#pragma once
#include <c10/macros/Macros.h>
#include <cstdint>

namespace reidfast {
namespace rank {

// AP conventions; the string names live in the schema and are parsed once per call.
enum ApMode : int { kTorchreid = 0, kMarket = 1 };

// What a row's outputs hold when the kernel could not rank it (read by reidfast/ops/rank_eval.py).
constexpr int64_t kNanRow = -1;       // in num_matches: the row has a NaN distance
constexpr int64_t kUnfinishedRow = -2;  // in first_hit: more matches than the CUDA kernel's shared list holds

// The gallery order: by distance, ties by gallery index (stable). Bitwise, not short-circuit: no branch.
template <typename T>
C10_HOST_DEVICE inline bool ordered_before(T d_a, int64_t a, T d_b, int64_t b) {
  return (d_a < d_b) | ((d_a == d_b) & (a < b));
}

// Same id and same camera as the query; with the official Market-1501 convention, also gallery label -1.
C10_HOST_DEVICE inline bool is_junk(int32_t g_pid, int32_t g_cam, int32_t q_pid, int32_t q_cam, int ap_mode) {
  return (g_pid == q_pid && g_cam == q_cam) || (ap_mode == kMarket && g_pid == -1);
}

// Item kinds for one query: removed, counted as a non-match, or a true match.
enum ItemKind : int { kJunk = 0, kNonMatch = 1, kMatch = 2 };

C10_HOST_DEVICE inline int item_kind(int32_t g_pid, int32_t g_cam, int32_t q_pid, int32_t q_cam, int ap_mode) {
  if (is_junk(g_pid, g_cam, q_pid, q_cam, ap_mode)) return kJunk;
  return g_pid == q_pid ? kMatch : kNonMatch;
}

// item_kind(...) == kNonMatch without branches (the hot test of the counting pass).
C10_HOST_DEVICE inline bool is_kept_non_match(int32_t g_pid, int32_t q_pid, int ap_mode) {
  return (g_pid != q_pid) & !((ap_mode == kMarket) & (g_pid == -1));
}

// Number of matches (sorted by ordered_before, p of them) ordered before item (d, j): a lower bound.
template <typename T, typename Index>
C10_HOST_DEVICE inline int matches_before(const T* match_d, const Index* match_j, int p, T d, int64_t j) {
  int lo = 0, hi = p;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ordered_before(match_d[mid], static_cast<int64_t>(match_j[mid]), d, j))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The AP contribution of the k-th match (1-based) at 0-based rank r, before dividing by P.
//   torchreid: precision at the match, k / (r + 1).
//   market:    (precision before + precision at) / 2, precision before = (k - 1) / r, or 1 when r == 0.
C10_HOST_DEVICE inline double ap_term(int64_t k, int64_t r, int ap_mode) {
  const double at = static_cast<double>(k) / static_cast<double>(r + 1);
  if (ap_mode == kMarket) {
    const double before = r == 0 ? 1.0 : static_cast<double>(k - 1) / static_cast<double>(r);
    return 0.5 * (before + at);
  }
  return at;
}

// A query's inverse negative penalty (mINP's term): its P matches over the 0-based rank of the last one, plus 1.
// IEEE division on both devices, so the CPU and CUDA kernels agree to the bit.
C10_HOST_DEVICE inline double inp_term(int64_t num_matches, int64_t last_rank) {
  return static_cast<double>(num_matches) / static_cast<double>(last_rank + 1);
}

// The summary vector (rank_summary op; reidfast/ops/rank_result.py reads it), float64, max_rank + kSummaryTail
// entries: [0, max_rank) the valid queries whose first hit is at rank <= r, then the tail below.
enum SummaryTail : int {
  kValidQueries = 0,  // queries with at least one true match
  kApSum = 1,         // sum of AP over them
  kInpSum = 2,        // sum of INP over them
  kNanRows = 3,       // rows flagged kNanRow
  kUnfinishedRows = 4,  // rows flagged kUnfinishedRow
  kSummaryTail = 5,
};

// What one query row adds to the summary (both kernels sum these; rank_result.py's summary_on_device is the torch twin).
struct RowSummary {
  bool valid;       // has a true match: counts in kValidQueries, kApSum, kInpSum
  bool nan;         // counts in kNanRows
  bool unfinished;  // counts in kUnfinishedRows
  int64_t cmc_rank;  // the rank whose CMC count it raises (from there on), or -1 for none
};

C10_HOST_DEVICE inline RowSummary summarize_row(int64_t first_hit, int64_t num_matches) {
  RowSummary s;
  s.valid = num_matches > 0;
  s.nan = num_matches == kNanRow;
  s.unfinished = first_hit == kUnfinishedRow;
  s.cmc_rank = s.valid && first_hit >= 0 ? first_hit : -1;
  return s;
}

}  // namespace rank
}  // namespace reidfast
