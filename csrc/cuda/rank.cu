// Ranking on CUDA: one block per query. The block finds the query's true matches from the gallery's ids alone
// (all of them, or the query's group of the gallery grouped by id when the evaluation is large: groups_by_scan),
// reading the row only at the matches, and orders them by (distance, index) in shared memory. One pass over the
// row then checks for NaN and counts, for each kept non-match ordered before the last match, how many matches
// precede it, from which one thread walks the ranks of the matches to AP (rank_math.h). The count goes through the
// distance buckets of rank_math.h (MatchBuckets), as on the CPU: an item is a multiply and a table lookup, and lands
// in one of up to kMaxBuckets shared counters; only the items that share a bucket with a match are compared with
// the matches. Rows whose buckets cannot be used (infinite distances at
// the first or last match, all matches at one distance) place every item by binary search into a histogram of the
// p + 1 ranks, as every row does under REIDFAST_RANK_COUNT=search (rank_checks.h). Each thread keeps kUnroll loads
// in flight: one outstanding 4-byte load per thread leaves the pass latency-bound, well below memory bandwidth.
// Rows with more matches than the shared list holds are flagged for the caller.
// Measured on H100 machines before the buckets: the binary search (about five dependent shared-memory steps per
// item) and shared atomics on p + 1 bins took 0.205 ms at Market scale and 3.60 ms at MSMT17 scale, against about
// 0.07 and 1.3 ms for one read of the matrix: the pass was bound by instructions, not memory. Tried then and
// measured slower: comparing one 64-bit key per search step (the distance's IEEE bits made monotone, above the
// index): 0.251 and 4.60 ms.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "reidfast/rank_checks.h"
#include "reidfast/rank_math.h"

namespace reidfast {
namespace rank {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;         // row items per thread per step of the counting pass, loaded before use
constexpr int kMaxMatches = 1024;  // shared list size; more matches -> kUnfinishedRow (the caller redoes the row)

// Block-wide: whether the row holds a NaN (for rows that skip the counting pass, which checks as it reads).
template <typename scalar_t>
__device__ bool row_has_nan(const scalar_t* __restrict__ row, int num_g) {
  bool nan = false;
  for (int j = threadIdx.x; j < num_g; j += kThreads) nan |= row[j] != row[j];
  return __syncthreads_or(nan);
}

// visit(d, j, g_pid) for every item of the row, each thread kUnroll items apart by kThreads, all kUnroll loads issued
// before the first use. Items past the row's end load as the query's own id (q_pid), which counts for nothing.
template <typename scalar_t, typename Visit>
__device__ __forceinline__ void for_each_row_item(const scalar_t* __restrict__ row,
                                                  const int32_t* __restrict__ g_pids,
                                                  int num_g, int32_t q_pid, Visit&& visit) {
  for (int base = threadIdx.x; base < num_g; base += kUnroll * kThreads) {
    scalar_t d[kUnroll];
    int32_t g[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int j = base + u * kThreads;
      const bool in_row = j < num_g;
      d[u] = in_row ? row[j] : scalar_t(0);
      g[u] = in_row ? g_pids[j] : q_pid;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) visit(d[u], base + u * kThreads, g[u]);
  }
}

// How each block finds its query's true matches. Grouping the gallery by id (a stable sort and two searches) is
// about a dozen launches, which at Market scale the host queues more slowly than the GPU ranks (H100 run 8: 26
// kernels, 0.26 ms of GPU time in a 0.80 ms call), and which wait for the GPU before the ranking can start. Reading
// every gallery id instead costs each block 4 bytes per item from L2, Q x G x 4 bytes in all: 214 MB at Market
// scale, a few tens of microseconds, but 3.8 GB at MSMT17 scale. Below kScanLimit items (Q x G; Market and
// DukeMTMC are under it, MSMT17 above) blocks scan. REIDFAST_RANK_GROUPS=sort or =scan forces one way, for the
// benchmark's comparison and the tests of both.
constexpr int64_t kScanLimit = int64_t(1) << 27;

bool groups_by_scan(int64_t num_q, int64_t num_g) {
  switch (env_switch("REIDFAST_RANK_GROUPS", "sort", "scan")) {
    case 1: return false;
    case 2: return true;
    default: return num_q * num_g <= kScanLimit;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rank_queries_kernel(const scalar_t* __restrict__ dist, int64_t row_stride, int num_g,
                        const int32_t* __restrict__ q_pids,
                        const int32_t* __restrict__ q_cams, const int32_t* __restrict__ g_pids,
                        const int32_t* __restrict__ g_cams, const int64_t* __restrict__ by_id_index,
                        const int64_t* __restrict__ group_begin, const int64_t* __restrict__ group_end,
                        int ap_mode, bool allow_buckets, double* __restrict__ ap_out, double* __restrict__ inp_out,
                        int64_t* __restrict__ first_out, int64_t* __restrict__ count_out) {
  // The matches as collected (unordered) share their memory with the bucket counts, used only after sorting.
  __shared__ union {
    struct {
      scalar_t d[kMaxMatches];
      int j[kMaxMatches];
    } match;
    int bucket_items[kMaxBuckets];  // kept non-matches per bucket, for buckets without a match
  } scratch;
  scalar_t* match_d = scratch.match.d;
  int* match_j = scratch.match.j;
  __shared__ scalar_t sorted_d[kMaxMatches];
  __shared__ int sorted_j[kMaxMatches];
  __shared__ int hist[kMaxMatches + 1];  // + 1: a NaN among the matches can send an item to bin p (row discarded)
  __shared__ int bucket_start[kMaxBuckets + 1];  // matches in the buckets below each one (rank_math.h)
  __shared__ int num_matches;

  const int64_t q = blockIdx.x;
  const scalar_t* row = dist + q * row_stride;
  const int32_t q_pid = q_pids[q], q_cam = q_cams[q];
  if (threadIdx.x == 0) num_matches = 0;
  __syncthreads();

  // The true matches, in any order (sorted below): the items with the query's id, less the junk of its camera.
  const auto collect = [&](int j) {
    if (item_kind(g_pids[j], g_cams[j], q_pid, q_cam, ap_mode) == kMatch) {
      const int slot = atomicAdd(&num_matches, 1);
      if (slot < kMaxMatches) {
        match_d[slot] = row[j];
        match_j[slot] = j;
      }
    }
  };
  if (by_id_index != nullptr) {  // the query's group of the gallery grouped by id
    for (int64_t i = group_begin[q] + threadIdx.x; i < group_end[q]; i += kThreads)
      collect(static_cast<int>(by_id_index[i]));
  } else {  // every gallery id read (from L2), kUnroll loads in flight per thread
    for (int base = threadIdx.x; base < num_g; base += kUnroll * kThreads) {
      int32_t g[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int j = base + u * kThreads;
        g[u] = j < num_g ? g_pids[j] : ~q_pid;  // past the end: an id that is not the query's
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (g[u] == q_pid) collect(base + u * kThreads);
    }
  }
  __syncthreads();
  const int p = num_matches;
  if (p == 0 || p > kMaxMatches) {
    const bool has_nan = row_has_nan(row, num_g);
    if (threadIdx.x == 0) {
      ap_out[q] = 0.0;
      inp_out[q] = 0.0;
      first_out[q] = p > kMaxMatches && !has_nan ? kUnfinishedRow : -1;
      count_out[q] = has_nan ? kNanRow : p;
    }
    return;
  }

  // Order the matches: each one's position is the number of matches ordered before it (keys are distinct; with
  // a NaN among them positions can collide, and the row's result is discarded below).
  for (int i = threadIdx.x; i < p; i += kThreads) {
    const scalar_t d = match_d[i];
    const int j = match_j[i];
    int pos = 0;
    for (int k = 0; k < p; ++k) pos += ordered_before(match_d[k], int64_t(match_j[k]), d, int64_t(j));
    sorted_d[pos] = d;
    sorted_j[pos] = j;
  }
  for (int i = threadIdx.x; i <= p; i += kThreads) hist[i] = 0;
  __syncthreads();

  MatchBuckets<scalar_t> buckets;
  const bool bucketed = allow_buckets && make_match_buckets(sorted_d[0], int64_t(sorted_j[0]), sorted_d[p - 1],
                                                            int64_t(sorted_j[p - 1]),
                                                            bucket_count_for(p), buckets);
  if (bucketed) {
    // (Written after the sort's last read of match_d / match_j, which bucket_items overlays.)
    for (int b = threadIdx.x; b <= buckets.count; b += kThreads) {
      bucket_start[b] = matches_in_buckets_below(buckets, sorted_d, p, b);
      if (b < buckets.count) scratch.bucket_items[b] = 0;
    }
    __syncthreads();
  }

  // The one pass over the row: NaN check, and the count of matches-before of each kept non-match ordered before
  // the last match.
  int before_first = 0;  // the most common bin, kept in a register to spare the shared atomics
  bool nan_seen = false;
  if (bucketed) {
    for_each_row_item(row, g_pids, num_g, q_pid, [&](scalar_t d, int j, int32_t g) {
      nan_seen |= d != d;
      const int32_t slot = item_slot(buckets, d, j, g, q_pid, ap_mode);
      if (slot == buckets.before_all()) {
        ++before_first;
      } else if (slot != buckets.no_match()) {
        const int start = bucket_start[slot], end = bucket_start[slot + 1];
        if (start == end)
          atomicAdd(&scratch.bucket_items[slot], 1);
        else  // shares its bucket with a match: placed exactly (a few items in 16)
          atomicAdd(&hist[matches_before_in_bucket(sorted_d, sorted_j, start, end, d, j)], 1);
      }
    });
    __syncthreads();
    // Each bucket's items have bucket_start[b] matches before them.
    for (int b = threadIdx.x; b < buckets.count; b += kThreads) {
      const int items = scratch.bucket_items[b];
      if (items) atomicAdd(&hist[bucket_start[b]], items);
    }
  } else {  // binary search per item into the histogram of the p + 1 ranks
    const scalar_t last_d = sorted_d[p - 1];
    const int64_t last_j = sorted_j[p - 1];
    for_each_row_item(row, g_pids, num_g, q_pid, [&](scalar_t d, int j, int32_t g) {
      nan_seen |= d != d;
      if (ordered_before(d, int64_t(j), last_d, last_j) & is_kept_non_match(g, q_pid, ap_mode)) {
        const int pos = matches_before(sorted_d, sorted_j, p, d, j);
        if (pos == 0)
          ++before_first;
        else
          atomicAdd(&hist[pos], 1);
      }
    });
  }
  if (before_first) atomicAdd(&hist[0], before_first);
  const bool has_nan = __syncthreads_or(nan_seen);  // also the barrier before the histogram is read

  if (threadIdx.x == 0) {
    if (has_nan) {
      ap_out[q] = 0.0;
      inp_out[q] = 0.0;
      first_out[q] = -1;
      count_out[q] = kNanRow;
      return;
    }
    double ap = 0.0;
    int64_t before = 0, first = 0, last = 0;
    for (int k = 1; k <= p; ++k) {
      before += hist[k - 1];
      const int64_t r = (k - 1) + before;
      if (k == 1) first = r;
      last = r;
      ap += ap_term(k, r, ap_mode);
    }
    ap_out[q] = ap / p;
    inp_out[q] = inp_term(p, last);
    first_out[q] = first;
    count_out[q] = p;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rank_queries_cuda(
    const at::Tensor& dist_in, const at::Tensor& q_pids_in, const at::Tensor& q_camids_in,
    const at::Tensor& g_pids_in, const at::Tensor& g_camids_in, c10::string_view ap_mode_name) {
  const c10::cuda::CUDAGuard guard(dist_in.device());
  RankArgs a = prepare(dist_in, q_pids_in, q_camids_in, g_pids_in, g_camids_in, ap_mode_name, c10::DeviceType::CUDA);
  const at::Tensor &dist = a.dist, &q_pids = a.q_pids, &q_camids = a.q_camids, &g_pids = a.g_pids,
                   &g_camids = a.g_camids;
  at::Tensor &ap = a.ap, &inp = a.inp, &first_hit = a.first_hit, &num_matches = a.num_matches;
  const int64_t num_q = a.num_q, num_g = a.num_g;
  const int ap_mode = a.ap_mode;
  if (num_q == 0) return a.outputs();
  TORCH_CHECK_VALUE(num_q < (int64_t(1) << 31), "rank_queries: at most 2^31 - 1 queries per call, got ", num_q);
  TORCH_CHECK_VALUE(num_g <= std::numeric_limits<int>::max() - kUnroll * kThreads,
                    "rank_queries: at most 2^31 - 1025 gallery items on CUDA, got ", num_g);
  // Large evaluations group the gallery by id once (stable: each group in index order) and find each query's group
  // in it, on the device; small ones let every block read all the gallery's ids instead (groups_by_scan).
  at::Tensor by_id_index, group_begin, group_end;
  if (!groups_by_scan(num_q, num_g)) {
    const auto by_id = at::sort(g_pids, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor& sorted_pids = std::get<0>(by_id);
    by_id_index = std::get<1>(by_id);
    group_begin = at::searchsorted(sorted_pids, q_pids);
    group_end = at::searchsorted(sorted_pids, q_pids, /*out_int32=*/false, /*right=*/true);
  }
  const auto data_or_null = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<int64_t>() : nullptr; };
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "rank_queries_cuda", [&] {
    rank_queries_kernel<scalar_t><<<static_cast<unsigned>(num_q), kThreads, 0, stream>>>(
        dist.const_data_ptr<scalar_t>(), a.row_stride, static_cast<int>(num_g), q_pids.const_data_ptr<int32_t>(),
        q_camids.const_data_ptr<int32_t>(), g_pids.const_data_ptr<int32_t>(), g_camids.const_data_ptr<int32_t>(),
        data_or_null(by_id_index), data_or_null(group_begin), data_or_null(group_end), ap_mode, a.allow_buckets,
        ap.mutable_data_ptr<double>(), inp.mutable_data_ptr<double>(), first_hit.mutable_data_ptr<int64_t>(),
        num_matches.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return a.outputs();
}

// The summary in one block: per-thread partial sums in a fixed order, then a fixed tree, so the result does not
// change from run to run (deterministic mode allows it); the CMC counts by a shared histogram of first hits (integer
// atomics: order-free) and a block scan, kSummaryBins ranks at a time, whatever max_rank is.
constexpr int kSummaryThreads = 512;
constexpr int kSummaryBins = 2048;

__global__ void __launch_bounds__(kSummaryThreads)
    rank_summary_kernel(const double* __restrict__ ap, const double* __restrict__ inp,
                        const int64_t* __restrict__ first, const int64_t* __restrict__ count, int64_t num_q,
                        int64_t max_rank, double* __restrict__ out) {
  __shared__ unsigned long long hits_at[kSummaryBins];
  __shared__ double sum_ap[kSummaryThreads], sum_inp[kSummaryThreads];
  __shared__ int64_t sum_valid[kSummaryThreads], sum_nan[kSummaryThreads], sum_unfinished[kSummaryThreads];
  const int t = threadIdx.x;

  double ap_part = 0.0, inp_part = 0.0;
  int64_t valid = 0, nan_rows = 0, unfinished_rows = 0;
  for (int64_t q = t; q < num_q; q += kSummaryThreads) {
    const RowSummary row = summarize_row(first[q], count[q]);
    nan_rows += row.nan;
    unfinished_rows += row.unfinished;
    if (row.valid) {
      ++valid;
      ap_part += ap[q];
      inp_part += inp[q];
    }
  }
  sum_ap[t] = ap_part;
  sum_inp[t] = inp_part;
  sum_valid[t] = valid;
  sum_nan[t] = nan_rows;
  sum_unfinished[t] = unfinished_rows;
  __syncthreads();
  for (int half = kSummaryThreads / 2; half > 0; half >>= 1) {
    if (t < half) {
      sum_ap[t] += sum_ap[t + half];
      sum_inp[t] += sum_inp[t + half];
      sum_valid[t] += sum_valid[t + half];
      sum_nan[t] += sum_nan[t + half];
      sum_unfinished[t] += sum_unfinished[t + half];
    }
    __syncthreads();
  }
  double* tail = out + max_rank;
  if (t == 0) {
    tail[kValidQueries] = static_cast<double>(sum_valid[0]);
    tail[kApSum] = sum_ap[0];
    tail[kInpSum] = sum_inp[0];
    tail[kNanRows] = static_cast<double>(sum_nan[0]);
    tail[kUnfinishedRows] = static_cast<double>(sum_unfinished[0]);
  }
  __syncthreads();  // sum_valid is reused below as the scan's scratch

  // Cumulative CMC counts: for ranks [base, base + bins), histogram the first hits, then each thread sums a run of
  // consecutive bins, the runs are scanned (Hillis-Steele over the threads), and each thread writes its run.
  int64_t* scan = sum_valid;
  int64_t carry = 0;  // valid queries with a first hit below base
  for (int64_t base = 0; base < max_rank; base += kSummaryBins) {
    const int bins = static_cast<int>(min(int64_t(kSummaryBins), max_rank - base));
    for (int b = t; b < bins; b += kSummaryThreads) hits_at[b] = 0;
    __syncthreads();
    for (int64_t q = t; q < num_q; q += kSummaryThreads) {
      const int64_t r = summarize_row(first[q], count[q]).cmc_rank, f = r - base;
      if (r >= 0 && f >= 0 && f < bins) atomicAdd(&hits_at[f], 1ull);
    }
    __syncthreads();
    const int run = (bins + kSummaryThreads - 1) / kSummaryThreads;
    const int lo = min(t * run, bins), hi = min(lo + run, bins);
    int64_t own = 0;
    for (int b = lo; b < hi; ++b) own += static_cast<int64_t>(hits_at[b]);
    scan[t] = own;
    __syncthreads();
    for (int offset = 1; offset < kSummaryThreads; offset <<= 1) {
      const int64_t left = t >= offset ? scan[t - offset] : 0;
      __syncthreads();
      scan[t] += left;
      __syncthreads();
    }
    int64_t running = carry + scan[t] - own;  // everything before this thread's run
    for (int b = lo; b < hi; ++b) {
      running += static_cast<int64_t>(hits_at[b]);
      out[base + b] = static_cast<double>(running);
    }
    carry += scan[kSummaryThreads - 1];
    __syncthreads();  // before the next chunk clears hits_at and overwrites scan
  }
}

at::Tensor rank_summary_cuda(const at::Tensor& ap, const at::Tensor& inp, const at::Tensor& first_hit,
                             const at::Tensor& num_matches, int64_t max_rank) {
  const c10::cuda::CUDAGuard guard(ap.device());
  at::Tensor out = prepare_summary(ap, inp, first_hit, num_matches, max_rank, c10::DeviceType::CUDA);
  rank_summary_kernel<<<1, kSummaryThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ap.const_data_ptr<double>(), inp.const_data_ptr<double>(), first_hit.const_data_ptr<int64_t>(),
      num_matches.const_data_ptr<int64_t>(), ap.size(0), max_rank, out.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("rank_queries", &rank_queries_cuda);
  m.impl("rank_summary", &rank_summary_cuda);
}

}  // namespace rank
}  // namespace reidfast
