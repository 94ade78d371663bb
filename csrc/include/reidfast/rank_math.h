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

// Distance buckets for the counting pass (both kernels): the range [first match, last match] is cut into `count`
// equal buckets, b(x) = floor((x - first) * scale) clamped to [0, count). b is monotone in x, so every match in a
// lower bucket than an item's has a strictly smaller distance and precedes it, every match in a higher bucket
// follows it, and only the matches sharing its bucket (a few items in 16) need comparing. An item in a bucket with
// no match has exactly start[b] matches before it, start[b] being the number of matches in the buckets below b:
// one multiply and one table lookup in place of a binary search, and a histogram over many buckets in place of
// one over the p + 1 ranks, whose few bins the CUDA kernel's shared atomics contend for.
template <typename T>
struct MatchBuckets {
  T first, last, scale, top;  // top: count - 1, the largest bucket, as T
  int32_t first_j, last_j;    // the first and the last match's gallery index (ties at their distance)
  int count;
  C10_HOST_DEVICE int32_t no_match() const { return count; }        // slot of an item that counts for no match
  C10_HOST_DEVICE int32_t before_all() const { return count + 1; }  // slot of an item before the first match
};

// 16 buckets per match, at least 256, at most kMaxBuckets (the CUDA kernel's shared table; the CPU kernel uses
// the same rule, so its tests cover the buckets the GPU builds): fewer per match beyond 64 matches.
constexpr int kMaxBuckets = 1024;

C10_HOST_DEVICE inline int bucket_count_for(int num_matches) {
  const int n = 16 * num_matches;
  return n < 256 ? 256 : (n > kMaxBuckets ? kMaxBuckets : n);
}

// x - x is 0 for finite x and NaN for infinities and NaN, on either device and without a math library.
template <typename T>
C10_HOST_DEVICE inline bool is_finite_value(T x) {
  return (x - x) == (x - x);
}

// The buckets for matches sorted by (distance, index), from the first and the last; false when they cannot be
// used (a non-finite distance at either end, all matches at one distance, or a span too small to scale): the
// caller then places every item by binary search (matches_before).
template <typename T>
C10_HOST_DEVICE inline bool make_match_buckets(T first_d, int64_t first_j, T last_d, int64_t last_j, int count,
                                               MatchBuckets<T>& b) {
  const T span = last_d - first_d;
  b.first = first_d;
  b.last = last_d;
  b.scale = static_cast<T>(count) / span;
  b.top = static_cast<T>(count - 1);
  b.first_j = static_cast<int32_t>(first_j);
  b.last_j = static_cast<int32_t>(last_j);
  b.count = count;
  return is_finite_value(first_d) & is_finite_value(span) & (span > T(0)) & is_finite_value(b.scale);
}

// The bucket of distance d, clamped: items below the first match land in bucket 0, above the last in the top one.
template <typename T>
C10_HOST_DEVICE inline int32_t bucket_of(const MatchBuckets<T>& b, T d) {
  T t = (d - b.first) * b.scale;
  t = t > T(0) ? t : T(0);
  t = t < b.top ? t : b.top;
  return static_cast<int32_t>(t);
}

// Where a row item goes in the counting pass: no_match() for junk, matches, NaN and items ordered after the last
// match (they precede no match), before_all() for kept non-matches ordered before the first match, else its
// bucket. Branch-free (the CPU loop vectorizes it).
template <typename T>
C10_HOST_DEVICE inline int32_t item_slot(const MatchBuckets<T>& b, T d, int32_t j, int32_t g_pid, int32_t q_pid,
                                         int ap_mode) {
  const bool before_last = (d < b.last) | ((d == b.last) & (j < b.last_j));
  const bool before_first = (d < b.first) | ((d == b.first) & (j < b.first_j));
  const int32_t slot = before_first ? b.before_all() : bucket_of(b, d);
  return (before_last & is_kept_non_match(g_pid, q_pid, ap_mode)) ? slot : b.no_match();
}

// The bucket table's entry for bucket `bucket` (0 to count): how many of the p matches, sorted by (distance, index),
// lie in the buckets below it. Their buckets do not decrease along the sorted list, so it is a lower bound search;
// each entry stands alone (the CUDA kernel's threads fill the table in parallel, with no scan).
template <typename T>
C10_HOST_DEVICE inline int matches_in_buckets_below(const MatchBuckets<T>& b, const T* sorted_d, int p, int bucket) {
  int lo = 0, hi = p;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (bucket_of(b, sorted_d[mid]) < bucket)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// The number of matches ordered before item (d, j) whose bucket holds the sorted matches [start, end): those of
// lower buckets (start of them) and those of its own that precede it.
template <typename T, typename Index>
C10_HOST_DEVICE inline int matches_before_in_bucket(const T* match_d, const Index* match_j, int start, int end, T d,
                                                    int64_t j) {
  int k = start;
  while (k < end && ordered_before(match_d[k], static_cast<int64_t>(match_j[k]), d, j)) ++k;
  return k;
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
