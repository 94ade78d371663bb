// Ranking on CUDA: one block per query. Pass 1 gathers the query's true matches into shared memory (and checks
// for NaN); the block orders those few by (distance, index); pass 2 counts, for each kept non-match ordered
// before the last match, how many matches precede it (binary search in shared memory) into a shared histogram,
// from which one thread walks the ranks of the matches to AP (rank_math.h). The row is read twice; the second
// read is served from L2. Rows with more matches than the shared list holds are flagged for the caller.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "reidfast/rank_checks.h"
#include "reidfast/rank_math.h"

namespace reidfast {
namespace rank {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxMatches = 1024;  // shared list size; more matches -> kOverflowRow (the caller redoes the row)

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rank_queries_kernel(const scalar_t* __restrict__ dist, int64_t num_g, const int32_t* __restrict__ q_pids,
                        const int32_t* __restrict__ q_cams, const int32_t* __restrict__ g_pids,
                        const int32_t* __restrict__ g_cams, int ap_mode, double* __restrict__ ap_out,
                        int64_t* __restrict__ first_out, int64_t* __restrict__ last_out,
                        int64_t* __restrict__ count_out) {
  __shared__ scalar_t match_d[kMaxMatches];
  __shared__ int match_j[kMaxMatches];
  __shared__ scalar_t sorted_d[kMaxMatches];
  __shared__ int sorted_j[kMaxMatches];
  __shared__ int hist[kMaxMatches];
  __shared__ int num_matches, has_nan;

  const int64_t q = blockIdx.x;
  const scalar_t* row = dist + q * num_g;
  const int32_t q_pid = q_pids[q], q_cam = q_cams[q];
  if (threadIdx.x == 0) {
    num_matches = 0;
    has_nan = 0;
  }
  __syncthreads();

  // Pass 1: matches (in any order; sorted below) and NaN.
  bool nan_seen = false;
  for (int64_t j = threadIdx.x; j < num_g; j += kThreads) {
    const scalar_t d = row[j];
    nan_seen |= d != d;
    if (item_kind(g_pids[j], g_cams[j], q_pid, q_cam, ap_mode) == kMatch) {
      const int slot = atomicAdd(&num_matches, 1);
      if (slot < kMaxMatches) {
        match_d[slot] = d;
        match_j[slot] = static_cast<int>(j);
      }
    }
  }
  if (nan_seen) has_nan = 1;
  __syncthreads();
  const int p = num_matches;
  if (has_nan || p == 0 || p > kMaxMatches) {
    if (threadIdx.x == 0) {
      ap_out[q] = 0.0;
      last_out[q] = -1;
      first_out[q] = p > kMaxMatches && !has_nan ? kOverflowRow : -1;
      count_out[q] = has_nan ? kNanRow : p;
    }
    return;
  }

  // Order the matches: each one's position is the number of matches ordered before it (keys are distinct).
  for (int i = threadIdx.x; i < p; i += kThreads) {
    const scalar_t d = match_d[i];
    const int j = match_j[i];
    int pos = 0;
    for (int k = 0; k < p; ++k) pos += ordered_before(match_d[k], int64_t(match_j[k]), d, int64_t(j));
    sorted_d[pos] = d;
    sorted_j[pos] = j;
  }
  for (int i = threadIdx.x; i < p; i += kThreads) hist[i] = 0;
  __syncthreads();

  // Pass 2: histogram of matches-before over the kept non-matches ordered before the last match.
  const scalar_t last_d = sorted_d[p - 1];
  const int64_t last_j = sorted_j[p - 1];
  int before_first = 0;  // the most common bin, kept in a register to spare the shared atomics
  for (int64_t j = threadIdx.x; j < num_g; j += kThreads) {
    const scalar_t d = row[j];
    if (ordered_before(d, j, last_d, last_j) & is_kept_non_match(g_pids[j], q_pid, ap_mode)) {
      const int pos = matches_before(sorted_d, sorted_j, p, d, j);
      if (pos == 0)
        ++before_first;
      else
        atomicAdd(&hist[pos], 1);
    }
  }
  if (before_first) atomicAdd(&hist[0], before_first);
  __syncthreads();

  if (threadIdx.x == 0) {
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
    first_out[q] = first;
    last_out[q] = last;
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
  at::Tensor &ap = a.ap, &first_hit = a.first_hit, &last_hit = a.last_hit, &num_matches = a.num_matches;
  const int64_t num_q = a.num_q, num_g = a.num_g;
  const int ap_mode = a.ap_mode;
  if (num_q == 0) return a.outputs();
  TORCH_CHECK_VALUE(num_q < (int64_t(1) << 31), "rank_queries: at most 2^31 - 1 queries per call, got ", num_q);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "rank_queries_cuda", [&] {
    rank_queries_kernel<scalar_t><<<static_cast<unsigned>(num_q), kThreads, 0, stream>>>(
        dist.const_data_ptr<scalar_t>(), num_g, q_pids.const_data_ptr<int32_t>(),
        q_camids.const_data_ptr<int32_t>(), g_pids.const_data_ptr<int32_t>(), g_camids.const_data_ptr<int32_t>(),
        ap_mode, ap.mutable_data_ptr<double>(), first_hit.mutable_data_ptr<int64_t>(),
        last_hit.mutable_data_ptr<int64_t>(), num_matches.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ap, first_hit, last_hit, num_matches};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) { m.impl("rank_queries", &rank_queries_cuda); }

}  // namespace rank
}  // namespace reidfast
