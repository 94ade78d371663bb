// AdaIN on CUDA. One kernel pair (forward, backward) serves both layouts through a compile-time shape of the
// thread block:
//   contiguous    : a block owns one row (n, c); its 256 threads stride along the H*W contiguous elements.
//   channels_last : a block owns 32 channels of one sample; threadIdx.x walks the contiguous channel axis (so a
//                   warp reads 32 neighbouring channels at once) and 8 threads per channel stride along H*W, the
//                   whole of it or, split in slices (cl_slices), a slice of it: then each direction takes two
//                   kernels, the slices' partial sums (Pass::kPartial) and, combining them, the element pass
//                   (Pass::kApply).
// Statistics use shifted sums (K = the row's first element): sum(x-K) and sum((x-K)^2) are one FMA each per
// element and merge by addition, and the shift keeps the variance free of the cancellation of raw sums.
// The second pass needs the row again. Contiguous rows that fit (kCache, up to 48 KiB of shared memory per block)
// are kept in shared memory from the first pass, so each input is read from DRAM once; other rows are re-read,
// from L2 when the working set fits there.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "reidfast/adain_checks.h"
#include "reidfast/adain_math.h"

namespace reidfast {
namespace adain {
namespace {

// kRowThreads: threads per row; 256 for contiguous rows, 8 for channels_last.
template <bool kChannelsLast, int kRowThreads>
struct BlockShape {
  static constexpr int kRows = kChannelsLast ? 32 : 1;  // rows (channels) per block
  static constexpr int kThreads = kRowThreads;          // threads per row
  static constexpr int kBlock = kRows * kThreads;
};

// What a launch computes over its rows:
//   kWhole  : the row's sums, then its elements (one kernel; a block walks whole rows)
//   kPartial: the sums over one slice of the row (blockIdx.y: the slice), to the partial sums (store_slice_sums)
//   kApply  : the row's sums from its slices' partials (added in slice order: deterministic), then the slice's
//             elements
enum class Pass { kWhole, kPartial, kApply };

// Where this thread's row lives, how to index its elements, and the elements [begin, end) of it this block
// takes: all of them, or slice blockIdx.y of slice_len elements.
template <bool kChannelsLast>
struct RowIndex {
  int64_t row;     // n * C + c
  bool valid;      // false for padding channels past C
  int64_t base;    // offset of element 0 of the row
  int64_t stride;  // distance between consecutive elements of the row
  int64_t begin, end;
  int lane_row, lane_i;

  __device__ RowIndex(int64_t C, int64_t HW, int64_t slice_len) {
    if (kChannelsLast) {
      const int64_t tiles = (C + 31) / 32;
      const int64_t n = blockIdx.x / tiles;
      const int64_t c = (blockIdx.x % tiles) * 32 + threadIdx.x;
      lane_row = threadIdx.x;
      lane_i = threadIdx.y;
      valid = c < C;
      row = n * C + c;
      base = n * HW * C + c;
      stride = C;
    } else {
      lane_row = 0;
      lane_i = threadIdx.x;
      valid = true;
      row = blockIdx.x;
      base = row * HW;
      stride = 1;
    }
    begin = blockIdx.y * slice_len;
    end = min(HW, begin + slice_len);
  }
};

// The slices' partial sums: two per row and slice, at partial[(row * slices + slice) * 2 + {0, 1}].
// This block's slice of a row stores its two sums (Pass::kPartial)...
template <typename acc_t>
__device__ __forceinline__ void store_slice_sums(acc_t* __restrict__ partial, int64_t row, acc_t a, acc_t b) {
  acc_t* p = partial + (row * gridDim.y + blockIdx.y) * 2;
  p[0] = a;
  p[1] = b;
}

// ...and a row's two sums are added from them, in slice order (Pass::kApply).
template <typename acc_t>
__device__ __forceinline__ void combine_slices(const acc_t* __restrict__ partial, int64_t row, acc_t& a, acc_t& b) {
  const acc_t* p = partial + row * gridDim.y * 2;
  a = 0;
  b = 0;
  for (unsigned s = 0; s < gridDim.y; ++s) {
    a += p[2 * s];
    b += p[2 * s + 1];
  }
}

// Sums two values over the threads that share a row; every thread gets the totals.
template <bool kChannelsLast, int kRowThreads, typename acc_t>
__device__ void reduce_pair(acc_t& a, acc_t& b, int lane_row, int lane_i) {
  using S = BlockShape<kChannelsLast, kRowThreads>;
  __shared__ acc_t buf_a[S::kThreads][S::kRows];
  __shared__ acc_t buf_b[S::kThreads][S::kRows];
  buf_a[lane_i][lane_row] = a;
  buf_b[lane_i][lane_row] = b;
  __syncthreads();
  for (int s = S::kThreads / 2; s > 0; s >>= 1) {
    if (lane_i < s) {
      buf_a[lane_i][lane_row] += buf_a[lane_i + s][lane_row];
      buf_b[lane_i][lane_row] += buf_b[lane_i + s][lane_row];
    }
    __syncthreads();
  }
  a = buf_a[0][lane_row];
  b = buf_b[0][lane_row];
}

// After each thread's share of its row's two sums: the block's totals in every thread of the row. False where the
// thread is done: its row is a padding channel, or the block only stores its slice's sums (Pass::kPartial).
template <bool kChannelsLast, int kRowThreads, Pass kPass, typename acc_t>
__device__ __forceinline__ bool block_sums(const RowIndex<kChannelsLast>& ix, acc_t* __restrict__ partial, acc_t& a,
                                           acc_t& b) {
  reduce_pair<kChannelsLast, kRowThreads>(a, b, ix.lane_row, ix.lane_i);
  if (!ix.valid) return false;
  if (kPass == Pass::kPartial) {
    if (ix.lane_i == 0) store_slice_sums(partial, ix.row, a, b);
    return false;
  }
  return true;
}

// Sums are shifted by the row's first element (every slice shifts by the same one, so partials add up).
template <typename scalar_t, bool kChannelsLast, bool kCache, int kRowThreads, Pass kPass>
__global__ void __launch_bounds__(BlockShape<kChannelsLast, kRowThreads>::kBlock)
    adain_forward_kernel(const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ w,
                         const at::opmath_type<scalar_t>* __restrict__ b, const scalar_t* __restrict__ res,
                         scalar_t* __restrict__ y, at::opmath_type<scalar_t>* __restrict__ mean_out,
                         at::opmath_type<scalar_t>* __restrict__ rstd_out,
                         at::opmath_type<scalar_t>* __restrict__ partial, int64_t C, int64_t HW, int64_t slice_len,
                         int act, at::opmath_type<scalar_t> slope, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  using S = BlockShape<kChannelsLast, kRowThreads>;
  static_assert(!(kCache && kChannelsLast), "the row cache serves contiguous rows only");
  static_assert(!(kCache && kPass != Pass::kWhole), "the row cache serves whole rows only");
  extern __shared__ unsigned char smem[];
  scalar_t* x_cache = reinterpret_cast<scalar_t*>(smem);  // HW elements when kCache
  const RowIndex<kChannelsLast> ix(C, HW, slice_len);
  acc_t s1 = 0, s2 = 0;
  const acc_t shift = ix.valid ? static_cast<acc_t>(x[ix.base]) : acc_t(0);
  if (kPass == Pass::kApply) {
    if (!ix.valid) return;
    combine_slices(partial, ix.row, s1, s2);
  } else {
    if (ix.valid) {
      for (int64_t i = ix.begin + ix.lane_i; i < ix.end; i += S::kThreads) {
        const scalar_t v = x[ix.base + i * ix.stride];
        if (kCache) x_cache[i] = v;  // read back only by this thread: no barrier needed
        const acc_t d = static_cast<acc_t>(v) - shift;
        s1 += d;
        s2 += d * d;
      }
    }
    if (!block_sums<kChannelsLast, kRowThreads, kPass>(ix, partial, s1, s2)) return;
  }
  const acc_t m1 = s1 / HW;
  const acc_t var = max(s2 / HW - m1 * m1, acc_t(0));
  const acc_t mu = shift + m1;
  const acc_t inv = rsqrt(var + eps);  // rsqrt: a few ulp from 1/sqrt, well inside the tested tolerance
  if (ix.lane_i == 0 && blockIdx.y == 0) {
    mean_out[ix.row] = mu;
    rstd_out[ix.row] = inv;
  }
  const RowAffine<acc_t> a = row_affine(mu, inv, w[ix.row], b[ix.row]);
  for (int64_t i = ix.begin + ix.lane_i; i < ix.end; i += S::kThreads) {
    const int64_t o = ix.base + i * ix.stride;
    acc_t v = forward_element(static_cast<acc_t>(kCache ? x_cache[i] : x[o]), a, act, slope);
    if (res != nullptr) v += static_cast<acc_t>(res[o]);
    y[o] = static_cast<scalar_t>(v);
  }
}

template <typename scalar_t, bool kChannelsLast, bool kCache, int kRowThreads, Pass kPass>
__global__ void __launch_bounds__(BlockShape<kChannelsLast, kRowThreads>::kBlock)
    adain_backward_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                          const at::opmath_type<scalar_t>* __restrict__ w,
                          const at::opmath_type<scalar_t>* __restrict__ b,
                          const at::opmath_type<scalar_t>* __restrict__ mean,
                          const at::opmath_type<scalar_t>* __restrict__ rstd, scalar_t* __restrict__ gx,
                          at::opmath_type<scalar_t>* __restrict__ gw, at::opmath_type<scalar_t>* __restrict__ gb,
                          at::opmath_type<scalar_t>* __restrict__ partial, int64_t C, int64_t HW, int64_t slice_len,
                          int act, at::opmath_type<scalar_t> slope) {
  using acc_t = at::opmath_type<scalar_t>;
  using S = BlockShape<kChannelsLast, kRowThreads>;
  static_assert(!(kCache && kChannelsLast), "the row cache serves contiguous rows only");
  static_assert(!(kCache && kPass != Pass::kWhole), "the row cache serves whole rows only");
  extern __shared__ unsigned char smem[];
  scalar_t* x_cache = reinterpret_cast<scalar_t*>(smem);  // HW elements of x, then HW of grad_y, when kCache
  scalar_t* gy_cache = x_cache + (kCache ? HW : 0);
  const RowIndex<kChannelsLast> ix(C, HW, slice_len);
  acc_t sum_g = 0, sum_gx = 0, mu = 0, inv = 0, wr = 0, br = 0;
  if (ix.valid) {
    mu = mean[ix.row];
    inv = rstd[ix.row];
    wr = w[ix.row];
    br = b[ix.row];
  }
  if (kPass == Pass::kApply) {
    if (!ix.valid) return;
    combine_slices(partial, ix.row, sum_g, sum_gx);
  } else {
    if (ix.valid) {
      for (int64_t i = ix.begin + ix.lane_i; i < ix.end; i += S::kThreads) {
        const int64_t o = ix.base + i * ix.stride;
        const scalar_t xv = x[o], gv = gy[o];
        if (kCache) {
          x_cache[i] = xv;
          gy_cache[i] = gv;
        }
        acc_t xh;
        const acc_t g =
            grad_preactivation(static_cast<acc_t>(gv), static_cast<acc_t>(xv), mu, inv, wr, br, act, slope, &xh);
        sum_g += g;
        sum_gx += g * xh;
      }
    }
    if (!block_sums<kChannelsLast, kRowThreads, kPass>(ix, partial, sum_g, sum_gx)) return;
  }
  if (ix.lane_i == 0 && blockIdx.y == 0) {
    gb[ix.row] = sum_g;
    gw[ix.row] = sum_gx;
  }
  const acc_t mg = sum_g / HW, mgx = sum_gx / HW;
  for (int64_t i = ix.begin + ix.lane_i; i < ix.end; i += S::kThreads) {
    const int64_t o = ix.base + i * ix.stride;
    acc_t xh;
    const acc_t g = grad_preactivation(static_cast<acc_t>(kCache ? gy_cache[i] : gy[o]),
                                       static_cast<acc_t>(kCache ? x_cache[i] : x[o]), mu, inv, wr, br, act, slope,
                                       &xh);
    gx[o] = static_cast<scalar_t>(grad_input(g, xh, inv, wr, mg, mgx));
  }
}

// Shared memory a block may take without opting in to more; rows whose cache would exceed it are re-read.
constexpr int64_t kMaxRowCacheBytes = 48 * 1024;

// Slices of H*W per channel of the channels_last kernels. A block takes 32 channels of one sample, so a block per
// channel tile makes N * C / 32 blocks: 128 for DG-Net's decoder at 32x128x64x32, about one per SM, whose 256
// threads are all the loads the SM has in flight (expected near a tenth of copy bandwidth; not yet measured). Cut
// in slices, the rows fill the device, at the price of a second kernel per direction and a second read of the
// inputs (from L2 where they fit). "auto" takes enough slices for about 8 blocks per SM (a full SM at 256 threads
// each), keeping at least 16 elements per thread; an integer forces that count (at most H*W). Read per call from
// REIDFAST_ADAIN_CL_SLICES: unset (or 1) keeps one block per channel tile until the adain GPU benchmark's rows
// ("fwd-cl", "fwd-cl-sliced", and the same for fwdbwd) have measured the two.
constexpr int kClRowThreads = 8;
constexpr int kMaxSlices = 65535;  // gridDim.y

// The current device's SM count (cudaDeviceGetAttribute directly: ATen's device-properties header pulls in the
// cuSPARSE and cuBLAS headers, which a build machine without the full toolkit lacks).
int64_t sm_count() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}

int64_t cl_slices(int64_t N, int64_t C, int64_t HW) {
  const char* v = std::getenv("REIDFAST_ADAIN_CL_SLICES");
  if (v == nullptr || v[0] == '\0') return 1;
  if (std::strcmp(v, "auto") == 0) {
    const int64_t blocks = N * ((C + 31) / 32);
    const int64_t want = 8 * sm_count();
    const int64_t most = std::max<int64_t>(1, HW / (kClRowThreads * 16));
    return std::min<int64_t>({(want + blocks - 1) / blocks, most, kMaxSlices});
  }
  char* rest = nullptr;
  const long long k = std::strtoll(v, &rest, 10);
  TORCH_CHECK_VALUE(rest != v && *rest == '\0' && k >= 1 && k <= kMaxSlices,
                    "REIDFAST_ADAIN_CL_SLICES must be 'auto' or an integer from 1 to ", kMaxSlices,
                    " (slices of H*W per channel in adain's channels_last CUDA kernels), got '", v, "'");
  return std::min<int64_t>(k, HW);
}

// Calls launch(channels_last, cache) with the kernel variant for this layout and row size (as compile-time types).
template <typename Launch>
void launch_variant(at::MemoryFormat layout, int64_t cache_bytes, Launch&& launch) {
  if (layout == at::MemoryFormat::ChannelsLast)
    launch(std::true_type{}, std::false_type{});
  else if (cache_bytes <= kMaxRowCacheBytes)
    launch(std::false_type{}, std::true_type{});
  else
    launch(std::false_type{}, std::false_type{});
}

template <Pass kPass>
using PassConstant = std::integral_constant<Pass, kPass>;

// The launches of one direction: one kernel over whole rows, or (channels_last in slices) the slices' partial sums
// and then the element pass. launch(channels_last, cache, pass, blocks, threads, slice_len).
template <typename Launch>
void launch_passes(at::MemoryFormat layout, int64_t cache_bytes, int64_t N, int64_t C, int64_t HW, int64_t slices,
                   Launch&& launch) {
  launch_variant(layout, cache_bytes, [&](auto channels_last, auto cache) {
    if constexpr (!decltype(channels_last)::value) {
      launch(channels_last, cache, PassConstant<Pass::kWhole>{}, dim3(static_cast<unsigned>(N * C)),
             dim3(BlockShape<false, 256>::kThreads), HW);
    } else {
      const int64_t slice_len = (HW + slices - 1) / slices;
      const unsigned tiles = static_cast<unsigned>(N * ((C + 31) / 32));
      const dim3 threads(32, kClRowThreads);
      if (slices == 1) {
        launch(channels_last, cache, PassConstant<Pass::kWhole>{}, dim3(tiles), threads, HW);
        return;
      }
      const dim3 blocks(tiles, static_cast<unsigned>((HW + slice_len - 1) / slice_len));  // no empty slice
      launch(channels_last, cache, PassConstant<Pass::kPartial>{}, blocks, threads, slice_len);
      launch(channels_last, cache, PassConstant<Pass::kApply>{}, blocks, threads, slice_len);
    }
  });
}

// Slices of a call (1 unless channels_last), and a buffer for their partial sums (two per row and slice; ceil
// division may leave fewer slices than asked for, never more).
int64_t slices_of(at::MemoryFormat layout, int64_t N, int64_t C, int64_t HW) {
  return layout == at::MemoryFormat::ChannelsLast ? cl_slices(N, C, HW) : 1;
}

at::Tensor partial_sums(int64_t N, int64_t C, int64_t slices, const at::Tensor& like) {
  return at::empty({slices > 1 ? N * C * slices * 2 : 0}, like.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_forward_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                                  const at::Tensor& bias_in,
                                                                  const c10::optional<at::Tensor>& residual_in,
                                                                  c10::string_view activation, double negative_slope,
                                                                  double eps) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  ForwardArgs a = prepare_forward(x_in, weight_in, bias_in, residual_in, activation, eps, c10::DeviceType::CUDA);
  const at::Tensor &x = a.x, &weight = a.weight, &bias = a.bias, &residual = a.residual;
  at::Tensor &y = a.y, &mean = a.mean, &rstd = a.rstd;
  const auto layout = a.layout;
  const int act = a.act;
  if (x.numel() == 0) return {y, mean, rstd};
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t slices = slices_of(layout, N, C, HW);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* res = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    const int64_t cache_bytes = HW * static_cast<int64_t>(sizeof(scalar_t));
    at::Tensor partial = partial_sums(N, C, slices, mean);
    launch_passes(layout, cache_bytes, N, C, HW, slices, [&](auto channels_last, auto cache, auto pass, dim3 blocks,
                                                     dim3 threads, int64_t slice_len) {
      constexpr bool kCL = decltype(channels_last)::value, kCache = decltype(cache)::value;
      constexpr int kT = kCL ? kClRowThreads : 256;
      const int64_t smem = kCache ? cache_bytes : 0;
      adain_forward_kernel<scalar_t, kCL, kCache, kT, decltype(pass)::value><<<blocks, threads, smem, stream>>>(
          x.const_data_ptr<scalar_t>(), weight.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), res,
          y.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(),
          partial.numel() ? partial.mutable_data_ptr<acc_t>() : nullptr, C, HW, slice_len, act,
          static_cast<acc_t>(negative_slope), static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, c10::string_view activation, double negative_slope) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  BackwardArgs a = prepare_backward(grad_y_in, x_in, weight_in, bias_in, mean_in, rstd_in, activation,
                                    c10::DeviceType::CUDA);
  const at::Tensor &x = a.x, &gy = a.grad_y, &weight = a.weight, &bias = a.bias, &mean = a.mean, &rstd = a.rstd;
  at::Tensor &gx = a.grad_x, &gw = a.grad_weight, &gb = a.grad_bias;
  const auto layout = a.layout;
  const int act = a.act;
  if (x.numel() == 0) return {gx, gw, gb};
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t slices = slices_of(layout, N, C, HW);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t cache_bytes = 2 * HW * static_cast<int64_t>(sizeof(scalar_t));
    at::Tensor partial = partial_sums(N, C, slices, gw);
    launch_passes(layout, cache_bytes, N, C, HW, slices, [&](auto channels_last, auto cache, auto pass, dim3 blocks,
                                                     dim3 threads, int64_t slice_len) {
      constexpr bool kCL = decltype(channels_last)::value, kCache = decltype(cache)::value;
      constexpr int kT = kCL ? kClRowThreads : 256;
      const int64_t smem = kCache ? cache_bytes : 0;
      adain_backward_kernel<scalar_t, kCL, kCache, kT, decltype(pass)::value><<<blocks, threads, smem, stream>>>(
          gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), weight.const_data_ptr<acc_t>(),
          bias.const_data_ptr<acc_t>(), mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(),
          gx.mutable_data_ptr<scalar_t>(), gw.mutable_data_ptr<acc_t>(), gb.mutable_data_ptr<acc_t>(),
          partial.numel() ? partial.mutable_data_ptr<acc_t>() : nullptr, C, HW, slice_len, act,
          static_cast<acc_t>(negative_slope));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("adain_forward", &adain_forward_cuda);
  m.impl("adain_backward", &adain_backward_cuda);
}

}  // namespace adain
}  // namespace reidfast
