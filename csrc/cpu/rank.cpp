// Ranking on the CPU: at::parallel_for over queries. Per query the true matches come from the gallery grouped by
// id (no pass over the row), a sort orders those few, and one pass over the row counts the kept non-matches
// before each of them (rank_math.h) and checks for NaN.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "reidfast/rank_checks.h"
#include "reidfast/rank_math.h"

namespace reidfast {
namespace rank {
namespace {

// A query's bucket table (rank_math.h, MatchBuckets): start[b] = the number of matches in buckets below b,
// start[count] = p. False, with the table unset, when the buckets cannot be used. This replaced a binary search per
// item, whose unpredictable branches dominated the CPU time.
template <typename scalar_t>
bool make_bucket_table(const scalar_t* md, const int64_t* mj, int p, MatchBuckets<scalar_t>& buckets,
                       std::vector<int>& start) {
  if (!make_match_buckets(md[0], mj[0], md[p - 1], mj[p - 1], bucket_count_for(p), buckets)) return false;
  // By counting (O(p + count)); the CUDA kernel fills the same table by matches_in_buckets_below, entry by entry
  // (csrc/test/test_cpu_ops.cpp checks that the two agree).
  start.assign(buckets.count + 1, 0);
  for (int k = 0; k < p; ++k) ++start[bucket_of(buckets, md[k]) + 1];
  for (int b = 0; b < buckets.count; ++b) start[b + 1] += start[b];
  return true;
}

struct QueryOutput {
  double ap;
  int64_t first_hit, last_hit, num_matches;
};

// Scratch reused across the queries of one thread.
template <typename scalar_t>
struct Scratch {
  std::vector<scalar_t> match_d;
  std::vector<int64_t> match_j;
  std::vector<int64_t> order, hist;
  std::vector<scalar_t> sorted_d;
  std::vector<int64_t> sorted_j;
  std::vector<int> bucket_start;
  std::vector<int32_t> bucket_count;  // items per slot of one query (a row has fewer than 2^31)
  std::vector<int64_t> exact;
  std::vector<uint8_t> shares_match;
  const int32_t* g_pids = nullptr;
};

// slot_of[i] = item_slot(...) for a block of n row items; returns how many are NaN. Branch-free, so the compiler
// vectorizes it: with SSE2 (the build's baseline), and again with AVX2 where the CPU has it (chosen once, at run
// time; the same IEEE operations, so both give the same slots). On the development VM (AMD EPYC, one thread) the
// AVX2 copy took a Market-scale ranking from 89 to 72 ms.
template <typename scalar_t>
C10_ALWAYS_INLINE int item_slots_portable(const scalar_t* d, const int32_t* pid, int n, int32_t j0, int32_t q_pid,
                                          int ap_mode, const MatchBuckets<scalar_t>& buckets, int32_t* slot_of) {
  int nan_count = 0;
  for (int i = 0; i < n; ++i) {
    nan_count += d[i] != d[i];
    slot_of[i] = item_slot(buckets, d[i], j0 + i, pid[i], q_pid, ap_mode);
  }
  return nan_count;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same loop compiled for AVX2: the body above, inlined here (its default target is a subset of AVX2's).
template <typename scalar_t>
__attribute__((target("avx2"))) int item_slots_avx2(const scalar_t* d, const int32_t* pid, int n, int32_t j0,
                                                    int32_t q_pid, int ap_mode, const MatchBuckets<scalar_t>& buckets,
                                                    int32_t* slot_of) {
  return item_slots_portable(d, pid, n, j0, q_pid, ap_mode, buckets, slot_of);
}

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

template <typename scalar_t>
int item_slots(const scalar_t* d, const int32_t* pid, int n, int32_t j0, int32_t q_pid, int ap_mode,
               const MatchBuckets<scalar_t>& buckets, int32_t* slot_of) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_has_avx2()) return item_slots_avx2(d, pid, n, j0, q_pid, ap_mode, buckets, slot_of);
#endif
  return item_slots_portable(d, pid, n, j0, q_pid, ap_mode, buckets, slot_of);
}

// The counting pass with the bucket table, in blocks: a branch-free loop that the compiler vectorizes gives
// each item its slot (rank_math.h, item_slot), then a second loop, also without branches, adds every item to its
// slot's count and appends its index to the list of items to place exactly, advancing the list's end only for
// slots that share a bucket with a match (a few items in 16; their counts are left out below). Against a branch on
// that test it took a Market-scale ranking from 104 to 89 ms on one thread of the development VM; the one-loop
// version spends its time on the branches and the dependent lookups.
constexpr int kBlock = 512;

template <typename scalar_t>
void count_with_buckets(const scalar_t* row, int64_t num_g, int32_t q_pid, int ap_mode,
                        const MatchBuckets<scalar_t>& buckets, const int* start, const scalar_t* md,
                        const int64_t* mj, Scratch<scalar_t>& s, int64_t* hist, bool& has_nan) {
  const int32_t before_all = buckets.before_all();
  const int slots = buckets.count + 2;  // the buckets, no_match(), before_all()
  s.bucket_count.assign(slots, 0);
  s.shares_match.assign(slots, 0);
  for (int b = 0; b < buckets.count; ++b) s.shares_match[b] = start[b + 1] > start[b];
  s.exact.resize(std::min<int64_t>(num_g, kBlock));  // room for a whole block; the used part grows below
  int32_t* count = s.bucket_count.data();
  const uint8_t* shares = s.shares_match.data();
  int64_t num_exact = 0;
  int32_t slot_of[kBlock];
  int nan_count = 0;
  for (int64_t base = 0; base < num_g; base += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, num_g - base));
    const scalar_t* d_block = row + base;
    const int32_t* pid_block = s.g_pids + base;
    const int32_t j0 = static_cast<int32_t>(base);
    nan_count += item_slots(d_block, pid_block, n, j0, q_pid, ap_mode, buckets, slot_of);
    if (static_cast<int64_t>(s.exact.size()) < num_exact + n) s.exact.resize(2 * (num_exact + n));
    int64_t* exact = s.exact.data();
    for (int i = 0; i < n; ++i) {
      const int32_t b = slot_of[i];
      ++count[b];
      exact[num_exact] = base + i;
      num_exact += shares[b];
    }
  }
  has_nan = nan_count > 0;
  hist[0] += count[before_all];  // count[no_match()] counts for no rank
  for (int b = 0; b < buckets.count; ++b) hist[start[b]] += shares[b] ? 0 : count[b];
  for (int64_t e = 0; e < num_exact; ++e) {
    const int64_t j = s.exact[e];
    const int b = bucket_of(buckets, row[j]);
    ++hist[matches_before_in_bucket(md, mj, start[b], start[b + 1], row[j], j)];
  }
}

// The gallery grouped by id (stable, so each group is in index order): a query finds its same-id items without a
// pass over the row. Built once per call, shared by all queries.
struct GalleryById {
  std::vector<int32_t> pids;    // sorted ids
  std::vector<int64_t> index;   // gallery index of each entry of pids

  GalleryById(const int32_t* g_pids, int64_t num_g) : pids(num_g), index(num_g) {
    std::iota(index.begin(), index.end(), 0);
    std::stable_sort(index.begin(), index.end(), [&](int64_t a, int64_t b) { return g_pids[a] < g_pids[b]; });
    for (int64_t i = 0; i < num_g; ++i) pids[i] = g_pids[index[i]];
  }
};

template <typename scalar_t>
bool row_has_nan(const scalar_t* row, int64_t num_g) {
  bool nan = false;
  for (int64_t j = 0; j < num_g; ++j) nan |= row[j] != row[j];
  return nan;
}

template <typename scalar_t>
QueryOutput rank_one_query(const scalar_t* row, int64_t num_g, int32_t q_pid, int32_t q_cam, const int32_t* g_pids,
                           const int32_t* g_cams, const GalleryById& by_id, int ap_mode, bool allow_buckets,
                           Scratch<scalar_t>& s) {
  s.g_pids = g_pids;
  // The true matches, in gallery order, from the query's id group.
  s.match_d.clear();
  s.match_j.clear();
  const auto group = std::equal_range(by_id.pids.begin(), by_id.pids.end(), q_pid);
  for (auto it = group.first; it != group.second; ++it) {
    const int64_t j = by_id.index[it - by_id.pids.begin()];
    if (item_kind(g_pids[j], g_cams[j], q_pid, q_cam, ap_mode) == kMatch) {
      s.match_d.push_back(row[j]);
      s.match_j.push_back(j);
    }
  }
  const int p = static_cast<int>(s.match_d.size());
  if (p == 0) return {0.0, -1, -1, row_has_nan(row, num_g) ? kNanRow : 0};

  // Sort the matches by (distance, index): they were collected in index order, so a stable sort by distance.
  s.order.resize(p);
  std::iota(s.order.begin(), s.order.end(), 0);
  std::stable_sort(s.order.begin(), s.order.end(),
                   [&](int64_t a, int64_t b) { return s.match_d[a] < s.match_d[b]; });
  s.sorted_d.resize(p);
  s.sorted_j.resize(p);
  for (int i = 0; i < p; ++i) {
    s.sorted_d[i] = s.match_d[s.order[i]];
    s.sorted_j[i] = s.match_j[s.order[i]];
  }
  const scalar_t* md = s.sorted_d.data();
  const int64_t* mj = s.sorted_j.data();
  const scalar_t last_d = md[p - 1];
  const int64_t last_j = mj[p - 1];

  // The pass over the row: histogram of matches-before over the kept non-matches (items after the last match
  // affect no rank).
  MatchBuckets<scalar_t> buckets;
  const bool bucketed = allow_buckets && make_bucket_table(md, mj, p, buckets, s.bucket_start);
  s.hist.assign(p + 1, 0);  // bin p: items that count for no match (after the last one, junk, matches)
  int64_t* hist = s.hist.data();
  bool has_nan = false;  // checked in this pass, which reads every distance anyway
  if (bucketed) {
    count_with_buckets(row, num_g, q_pid, ap_mode, buckets, s.bucket_start.data(), md, mj, s, hist, has_nan);
  } else {  // infinite distances or all matches at one distance
    for (int64_t j = 0; j < num_g; ++j) {
      const scalar_t d = row[j];
      has_nan |= d != d;
      if (ordered_before(d, j, last_d, last_j) & is_kept_non_match(g_pids[j], q_pid, ap_mode))
        ++hist[matches_before(md, mj, p, d, j)];
    }
  }

  if (has_nan) return {0.0, -1, -1, kNanRow};

  QueryOutput out{0.0, 0, 0, p};
  int64_t before = 0;  // kept non-matches before the current match
  for (int k = 1; k <= p; ++k) {
    before += hist[k - 1];
    const int64_t r = (k - 1) + before;
    if (k == 1) out.first_hit = r;
    out.last_hit = r;
    out.ap += ap_term(k, r, ap_mode);
  }
  out.ap /= p;
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_queries_cpu(
    const at::Tensor& dist_in, const at::Tensor& q_pids_in, const at::Tensor& q_camids_in,
    const at::Tensor& g_pids_in, const at::Tensor& g_camids_in, c10::string_view ap_mode_name) {
  RankArgs a = prepare(dist_in, q_pids_in, q_camids_in, g_pids_in, g_camids_in, ap_mode_name, c10::DeviceType::CPU);
  const at::Tensor &dist = a.dist, &q_pids = a.q_pids, &q_camids = a.q_camids, &g_pids = a.g_pids,
                   &g_camids = a.g_camids;
  at::Tensor &ap = a.ap, &inp = a.inp, &first_hit = a.first_hit, &num_matches = a.num_matches;
  const int64_t num_q = a.num_q, num_g = a.num_g, row_stride = a.row_stride;
  const int ap_mode = a.ap_mode;
  if (num_q == 0) return a.outputs();
  const int32_t* qp = q_pids.const_data_ptr<int32_t>();
  const int32_t* qc = q_camids.const_data_ptr<int32_t>();
  const int32_t* gp = g_pids.const_data_ptr<int32_t>();
  const int32_t* gc = g_camids.const_data_ptr<int32_t>();
  double* ap_p = ap.mutable_data_ptr<double>();
  int64_t* first_p = first_hit.mutable_data_ptr<int64_t>();
  double* inp_p = inp.mutable_data_ptr<double>();
  int64_t* count_p = num_matches.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "rank_queries_cpu", [&] {
    const scalar_t* d = dist.const_data_ptr<scalar_t>();
    const GalleryById by_id(gp, num_g);
    at::parallel_for(0, num_q, 1, [&](int64_t begin, int64_t end) {
      Scratch<scalar_t> scratch;
      for (int64_t q = begin; q < end; ++q) {
        const QueryOutput o = rank_one_query(d + q * row_stride, num_g, qp[q], qc[q], gp, gc, by_id, ap_mode,
                                             a.allow_buckets, scratch);
        ap_p[q] = o.ap;
        first_p[q] = o.first_hit;
        inp_p[q] = o.num_matches > 0 ? inp_term(o.num_matches, o.last_hit) : 0.0;
        count_p[q] = o.num_matches;
      }
    });
  });
  return a.outputs();
}

// The summary in query order (the CUDA kernel sums in another fixed order: equal up to rounding).
at::Tensor rank_summary_cpu(const at::Tensor& ap_in, const at::Tensor& inp_in, const at::Tensor& first_hit_in,
                            const at::Tensor& num_matches_in, int64_t max_rank) {
  at::Tensor out = prepare_summary(ap_in, inp_in, first_hit_in, num_matches_in, max_rank, c10::DeviceType::CPU);
  const double* ap = ap_in.const_data_ptr<double>();
  const double* inp = inp_in.const_data_ptr<double>();
  const int64_t* first = first_hit_in.const_data_ptr<int64_t>();
  const int64_t* count = num_matches_in.const_data_ptr<int64_t>();
  double* cumulative = out.mutable_data_ptr<double>();
  double* tail = cumulative + max_rank;
  std::vector<int64_t> hits_at(max_rank, 0);
  int64_t valid = 0, nan_rows = 0, unfinished_rows = 0;
  double ap_sum = 0.0, inp_sum = 0.0;
  for (int64_t q = 0; q < ap_in.size(0); ++q) {
    const RowSummary row = summarize_row(first[q], count[q]);
    nan_rows += row.nan;
    unfinished_rows += row.unfinished;
    if (row.valid) {
      ++valid;
      ap_sum += ap[q];
      inp_sum += inp[q];
    }
    if (row.cmc_rank >= 0 && row.cmc_rank < max_rank) ++hits_at[row.cmc_rank];
  }
  int64_t running = 0;
  for (int64_t r = 0; r < max_rank; ++r) cumulative[r] = static_cast<double>(running += hits_at[r]);
  tail[kValidQueries] = static_cast<double>(valid);
  tail[kApSum] = ap_sum;
  tail[kInpSum] = inp_sum;
  tail[kNanRows] = static_cast<double>(nan_rows);
  tail[kUnfinishedRows] = static_cast<double>(unfinished_rows);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("rank_queries", &rank_queries_cpu);
  m.impl("rank_summary", &rank_summary_cpu);
}

}  // namespace rank
}  // namespace reidfast
