// Homography warp on CUDA: a 2-D grid of (point blocks, samples) so that a block never spans two samples; each
// thread owns kPointsPerThread output points, kThreads apart (each step of the block is coalesced). One point per
// thread: with 4 (unrolled, for more gathers in flight per thread) an H100 measured the forward kernel at 0.072 ms
// against 0.058 ms and grad_H's forward + backward at 0.172 against 0.154 ms, 128x3x256x128 fp32
// (bench/results/2026-11-27_NVIDIA-H100-80GB-HBM3.run3.md against .run2.md, which also predates the NaN check).
// Likely cause: the early exit and the stores between points keep the compiler from issuing the next point's
// loads early, so the unrolling bought little overlap and cost three quarters of the threads. Each thread computes
// a point's coordinates and taps once and loops over channels; for 1, 3 and 4 channels (a mask, RGB, and RGB with
// its mask or a channel of ones: what SA-GAN warps) the loop is unrolled at compile time so that all of a point's
// tap loads are issued together.
//
// Both kernels are bound by instruction issue more than by memory: the instructions one point takes through the
// fp32 RGB kernels (counted in their SASS, zeros padding), times the 4.2M points, over an H100's issue rate (132
// SMs x 4 warp instructions a clock, 1.75-1.98 GHz) account for most of the run 2 times (forward ~330 per point:
// 0.041-0.047 ms against 0.058 measured; backward ~515: 0.065-0.073 against ~0.096), while the bytes need 0.034 ms
// per kernel at copy bandwidth; the Triton forward, ~255 per point, took 0.048 ms. So the per-point work is kept
// short: the corner convention travels as numbers (AxisMap, whose base coordinates divide by a reciprocal), row
// and column come from a multiply-shift divider, taps use 32-bit offsets from a per-channel base pointer
// (channel_base), and the backward's 9 sums use a warp reduce-scatter. Counted the same way: forward 329 -> 260,
// backward 495 -> 365 instructions per point up to the block sum's barrier (about 515 -> 380 in all).
// Measured with them (H100, bench/results/*.run8.md, fp32): forward kernel 0.044 ms (77% of copy bandwidth), grad_H
// forward + backward 0.138 ms (49%), 0.117 ms (58%) with the backward's two points per thread; four are the
// default for the unrolled channel counts now (grad_h_points_per_thread).
// Backward:
//   grad_img: atomicAdd of the four weighted taps into a buffer in the coordinate dtype (float32 for half/bfloat16
//             images, cast at the end). Nondeterministic; with torch.use_deterministic_algorithms(True) the op
//             raises through at::globalContext().alertNotDeterministic, as grid_sample's CUDA backward does.
//   grad_H  : each thread sums its points' 9 contributions, the block sums its threads' (a reduce-scatter in each
//             warp, then 9 threads over the warps' partials, once per kThreads * kPointsPerThread points), each
//             block writes its 9 partial sums to its own slot, and the sample's last block to finish (an integer
//             counter per sample) sums the slots in slot order: deterministic, and no separate reduction kernel
//             (the first H100 profile: 17.5 us for one over 128 slots per sample, beside an 84 us backward kernel).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "reidfast/grid_math.h"
#include "reidfast/homography_checks.h"
#include "reidfast/homography_math.h"
#include "reidfast/warp_scatter.h"

namespace reidfast {
namespace homography {
namespace {

constexpr int kThreads = 256;
constexpr int kPointsPerThread = 1;
constexpr int kPointsPerBlock = kThreads * kPointsPerThread;

// T: the coordinate type. The corner convention travels as each axis's numbers (grid_math.h, AxisMap): the
// kernels do not branch on it.
template <typename T>
struct Geometry {
  int64_t C, in_h, in_w, out_h, out_w;
  int64_t in_sn, in_sc, in_sh, in_sw;
  int64_t out_sn, out_sc, out_sh, out_sw;
  int padding;
  bool align_corners;
  grid::AxisMap<T> out_x, out_y, in_x, in_y;
  at::cuda::detail::IntDivider<unsigned> out_w_divider;  // point index -> (row, column) by a multiply and a shift
};

template <typename T>
Geometry<T> make_geometry(const at::Tensor& img, const at::Tensor& out, int padding, bool align_corners) {
  return {img.size(1),   img.size(2),   img.size(3),   out.size(2),   out.size(3),
          img.stride(0), img.stride(1), img.stride(2), img.stride(3), out.stride(0),
          out.stride(1), out.stride(2), out.stride(3), padding,       align_corners,
          grid::axis_map<T>(out.size(3), align_corners), grid::axis_map<T>(out.size(2), align_corners),
          grid::axis_map<T>(img.size(3), align_corners), grid::axis_map<T>(img.size(2), align_corners),
          at::cuda::detail::IntDivider<unsigned>(static_cast<unsigned>(out.size(3)))};
}

// The output point this thread owns, resolved to tap offsets (relative to a channel's base; Off is int when the
// plane allows, homography_checks.h: plane_fits_int32) and in-image flags.
template <typename T, typename Off>
struct DevicePoint {
  Projected<T> proj;
  grid::SamplePoint<T> sp;
  Off off[4];
  bool in[4];
  bool nan;  // the coordinate is NaN (homography_math.h, coordinate_is_nan): taps off, output NaN
  T x, y;
};

template <typename T, typename Off>
__device__ __forceinline__ DevicePoint<T, Off> resolve_point(const T* __restrict__ h, int64_t i, int64_t j,
                                                             const Geometry<T>& g) {
  DevicePoint<T, Off> d;
  d.x = grid::base_coordinate<T>(j, g.out_x);
  d.y = grid::base_coordinate<T>(i, g.out_y);
  const T hh[9] = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]};
  d.proj = project(hh, d.x, d.y);
  d.nan = coordinate_is_nan(d.proj.gx, d.proj.gy);
  d.sp = grid::sample_point(d.nan ? T(0) : d.proj.gx, d.nan ? T(0) : d.proj.gy, g.in_x, g.in_y, g.in_w, g.in_h,
                            g.padding, g.align_corners);
  const grid::Taps<T>& t = d.sp.taps;
  d.in[0] = t.in_x0 && t.in_y0 && !d.nan;
  d.in[1] = t.in_x1 && t.in_y0 && !d.nan;
  d.in[2] = t.in_x0 && t.in_y1 && !d.nan;
  d.in[3] = t.in_x1 && t.in_y1 && !d.nan;
  const Off sh = static_cast<Off>(g.in_sh), sw = static_cast<Off>(g.in_sw);
  const Off o = t.y0 * sh + t.x0 * sw;
  d.off[0] = o;
  d.off[1] = o + sw;
  d.off[2] = o + sh;
  d.off[3] = o + sh + sw;
  return d;
}

// Channel counts with a compile-time unrolled loop; 0 = the count is read at run time.
template <int kChannels>
using Channels = std::integral_constant<int, kChannels>;

// Output points per thread of the backward kernel, as a compile-time constant.
template <int kPoints>
using Points = std::integral_constant<int, kPoints>;

// A type carried as a value, so that a generic lambda can name it (std::type_identity is C++20; we build as C++17).
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(Channels<K>{}, TypeTag<Off>{}): K = C for the unrolled counts, else 0; Off = int where the
// image's planes allow 32-bit tap offsets, else int64_t (with the run-time channel count only: such images are
// rare, and each variant is another kernel to compile).
template <typename F>
void dispatch_shape(int64_t C, bool narrow_offsets, F&& f) {
  if (!narrow_offsets)
    f(Channels<0>{}, TypeTag<int64_t>{});
  else if (C == 3)
    f(Channels<3>{}, TypeTag<int>{});
  else if (C == 4)
    f(Channels<4>{}, TypeTag<int>{});
  else if (C == 1)
    f(Channels<1>{}, TypeTag<int>{});
  else
    f(Channels<0>{}, TypeTag<int>{});
}

template <typename T>
bool narrow_offsets(const Geometry<T>& g) {
  return plane_fits_int32(g.in_h, g.in_w, g.in_sh, g.in_sw);
}

// A channel's base pointer, hidden from the compiler's address arithmetic: otherwise it folds the sample's and the
// channel's offsets into each tap's 64-bit index sum, four 64-bit instructions and a reload of the image pointer per
// tap where one 64-bit address step of the 32-bit offset is needed (the fp32 RGB forward kernel's path: 302 ->
// 271 instructions per point, counted in its SASS).
template <typename P>
__device__ __forceinline__ P* channel_base(P* p) {
  asm("" : "+l"(p));
  return p;
}

// A read through the read-only data cache (what the compiler chose on its own before channel_base hid the pointer's
// origin); the 2-byte types load their bits.
template <typename scalar_t>
__device__ __forceinline__ scalar_t load_read_only(const scalar_t* p) {
  if constexpr (sizeof(scalar_t) == 2) {
    return scalar_t(__ldg(reinterpret_cast<const unsigned short*>(p)), scalar_t::from_bits());
  } else {
    return __ldg(p);
  }
}

// A tap's value, 0 outside the image (a predicated load, no branch).
template <typename acc_t, typename scalar_t, typename Off>
__device__ __forceinline__ acc_t tap(const scalar_t* __restrict__ s, Off off, bool in) {
  return in ? static_cast<acc_t>(load_read_only(s + off)) : acc_t(0);
}

template <typename scalar_t, int kChannels, typename Off>
__global__ void homography_forward_kernel(const scalar_t* __restrict__ img,
                                          const at::opmath_type<scalar_t>* __restrict__ H,
                                          scalar_t* __restrict__ out,
                                          Geometry<at::opmath_type<scalar_t>> g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.y;
  // 32-bit point index math (launch_grid checks the bound): 64-bit division is emulated, tens of instructions.
  const int points = static_cast<int>(g.out_h * g.out_w);
  const scalar_t* src = img + n * g.in_sn;
  const int64_t C = kChannels > 0 ? kChannels : g.C;
#pragma unroll
  for (int k = 0; k < kPointsPerThread; ++k) {
    const int p = blockIdx.x * kPointsPerBlock + k * kThreads + threadIdx.x;
    if (p >= points) break;
    const auto row_col = g.out_w_divider.divmod(static_cast<unsigned>(p));
    const int i = static_cast<int>(row_col.div), j = static_cast<int>(row_col.mod);
    const DevicePoint<acc_t, Off> d = resolve_point<acc_t, Off>(H + n * 9, i, j, g);
    const grid::Taps<acc_t>& t = d.sp.taps;
    const acc_t w[4] = {t.w00(), t.w01(), t.w10(), t.w11()};
    scalar_t* dst = out + n * g.out_sn + i * g.out_sh + j * g.out_sw;
#pragma unroll
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* s = channel_base(src + c * g.in_sc);
      const acc_t v = w[0] * tap<acc_t>(s, d.off[0], d.in[0]) + w[1] * tap<acc_t>(s, d.off[1], d.in[1]) +
                      w[2] * tap<acc_t>(s, d.off[2], d.in[2]) + w[3] * tap<acc_t>(s, d.off[3], d.in[3]);
      dst[c * g.out_sc] = static_cast<scalar_t>(d.nan ? std::numeric_limits<acc_t>::quiet_NaN() : v);
    }
  }
}

// Writes the sum of v over the block to out[0..9): a reduce-scatter within each warp (warp_scatter.h: 12 shuffles
// where a shuffle tree per entry took 45; the warp's sums land in 9 of its lanes), every lane's result to shared
// memory, then threads 0-8 each add one entry over the warps (in a fixed order).
template <typename T>
__device__ __forceinline__ void block_sum9(const T (&v)[9], T (*shared)[warp::kLanes], T* __restrict__ out) {
  shared[threadIdx.x / warp::kLanes][threadIdx.x % warp::kLanes] = warp::reduce_scatter(v);
  __syncthreads();
  if (threadIdx.x < 9) {
    const int lane = warp::lane_of_item<9>(threadIdx.x);
    T s = 0;
#pragma unroll
    for (int w = 0; w < kThreads / warp::kLanes; ++w) s += shared[w][lane];
    out[threadIdx.x] = s;
  }
}

// kPoints output points per thread, kThreads apart. Points past the end are computed at the last point and
// contribute nothing, so a thread's points form one straight-line block of code that the compiler can interleave
// (an early exit between them kept run 3's 4-point kernels from overlapping their points' loads).
template <typename scalar_t, bool kNeedImg, bool kNeedH, int kChannels, typename Off, int kPoints>
__global__ void homography_backward_kernel(const scalar_t* __restrict__ grad_out,
                                           const scalar_t* __restrict__ img,
                                           const at::opmath_type<scalar_t>* __restrict__ H,
                                           at::opmath_type<scalar_t>* __restrict__ grad_img,
                                           at::opmath_type<scalar_t>* __restrict__ grad_h_partial,
                                           int* __restrict__ blocks_done, at::opmath_type<scalar_t>* __restrict__ grad_h,
                                           Geometry<at::opmath_type<scalar_t>> g) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shared[kThreads / warp::kLanes][warp::kLanes];
  const int64_t n = blockIdx.y;
  const int points = static_cast<int>(g.out_h * g.out_w);
  acc_t contrib[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  const scalar_t* src = img + n * g.in_sn;
  acc_t* gsrc = kNeedImg ? grad_img + n * g.in_sn : nullptr;
  const int64_t C = kChannels > 0 ? kChannels : g.C;
#pragma unroll
  for (int k = 0; k < kPoints; ++k) {
    const int p = (blockIdx.x * kPoints + k) * kThreads + threadIdx.x;
    const bool live = p < points;  // not an exit: every thread joins the block's grad_H sum below
    const auto row_col = g.out_w_divider.divmod(static_cast<unsigned>(live ? p : points - 1));
    const int i = static_cast<int>(row_col.div), j = static_cast<int>(row_col.mod);
    const DevicePoint<acc_t, Off> d = resolve_point<acc_t, Off>(H + n * 9, i, j, g);
    const grid::Taps<acc_t>& t = d.sp.taps;
    const acc_t w[4] = {t.w00(), t.w01(), t.w10(), t.w11()};
    const scalar_t* go_ptr = grad_out + n * g.out_sn + i * g.out_sh + j * g.out_sw;
    acc_t dpx = 0, dpy = 0;
#pragma unroll
    for (int64_t c = 0; c < C; ++c) {
      const acc_t go = static_cast<acc_t>(go_ptr[c * g.out_sc]);
      if (kNeedH) {
        const scalar_t* s = channel_base(src + c * g.in_sc);
        acc_t v[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) v[q] = tap<acc_t>(s, d.off[q], d.in[q]);
        acc_t vx, vy;
        grid::interpolate_grad_xy(t, v[0], v[1], v[2], v[3], &vx, &vy);
        dpx += go * vx;
        dpy += go * vy;
      }
      if (kNeedImg) {
        // not channel_base: a pointer of unknown origin turns atomicAdd into a generic atomic with a shared-memory
        // path (ATOM + ATOMS.CAST.SPIN) instead of a global reduction (REDG)
        acc_t* gs = gsrc + c * g.in_sc;
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (d.in[q] && live) atomicAdd(gs + d.off[q], go * w[q]);
      }
    }
    if (kNeedH) {
      acc_t a[3];
      grad_coefficients(d.proj, dpx * d.sp.dpx_dgx, dpy * d.sp.dpy_dgy, a);
      if (d.nan) a[0] = a[1] = a[2] = std::numeric_limits<acc_t>::quiet_NaN();
      if (!live) a[0] = a[1] = a[2] = acc_t(0);
#pragma unroll
      for (int r = 0; r < 3; ++r) {
        contrib[r * 3 + 0] += a[r] * d.x;
        contrib[r * 3 + 1] += a[r] * d.y;
        contrib[r * 3 + 2] += a[r];
      }
    }
  }
  if (kNeedH) {
    acc_t* slots = grad_h_partial + n * gridDim.x * 9;
    block_sum9(contrib, shared, slots + blockIdx.x * 9);
    __shared__ bool last;
    if (threadIdx.x < 9) __threadfence();  // the slot is visible to every block before this one counts as done
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(blocks_done + n, 1) == static_cast<int>(gridDim.x) - 1;
    __syncthreads();
    if (last && threadIdx.x < 9) {
      acc_t sum = 0;
      for (unsigned b = 0; b < gridDim.x; ++b) sum += __ldcg(slots + b * 9 + threadIdx.x);  // from L2, not L1
      grad_h[n * 9 + threadIdx.x] = sum;
    }
  }
}

dim3 launch_grid(int64_t N, int64_t points, int points_per_thread = kPointsPerThread) {
  const int64_t per_block = int64_t{kThreads} * points_per_thread;
  TORCH_CHECK(N <= 65535, "homography_warp (CUDA): at most 65535 samples per call, got ", N);
  TORCH_CHECK(points <= std::numeric_limits<int>::max() - per_block,
              "homography_warp (CUDA): at most 2^31 - 1 - ", per_block, " output points per image, got ", points);
  return dim3(static_cast<unsigned>((points + per_block - 1) / per_block), static_cast<unsigned>(N));
}

// Points per thread of the backward kernel for grad_H alone (SA-GAN's localization networks behind fixed images).
// Two halve the per-thread work that is not per point (H's loads, the block sum: 365 -> 324 instructions per point
// in the fp32 RGB kernel's SASS) but double the registers. Measured on an H100 (bench/results/*.run8*): two are
// faster for RGB (128x3x256x128 backward kernel 0.072 ms against 0.093 ms, fp32 and bf16; 16x3x256x128 13-15%),
// one for many channels (two took 25% longer at 64 channels, 44% at 256). Four were expected to take the fp32 RGB
// backward kernel to 0.061-0.063 ms on an H100, from the SASS instruction counts (1368, 1080 and 920 per point for
// 1, 2 and 4, which put 2 at 0.79x of 1 against the 0.77x measured) at the same occupancy (64 registers against 56;
// no spills); an H200 (the same SM count) measured 0.065 ms, against 0.070 at two points and 0.090 at one (bf16
// 0.067 against 0.071; bench/results/2026-11-28_NVIDIA-H200.run9.md). So four for the unrolled counts (1, 3 and 4
// channels), else one. Four channels (SA-GAN's image with its mask) came later, not yet measured: their four-point
// kernel has RGB's 64 registers and 944 static instructions a point (917 for RGB) where the run-time count's
// one-point kernel they took before has about 1,510, so the backward kernel is expected at 0.6-0.75x of that one's
// time. REIDFAST_HOMOGRAPHY_POINTS=1, 2 or 4 forces a count (read per call: the benchmark times each).
int grad_h_points_per_thread(int64_t channels) {
  const char* points = std::getenv("REIDFAST_HOMOGRAPHY_POINTS");
  if (points == nullptr || points[0] == '\0') return channels == 1 || channels == 3 || channels == 4 ? 4 : 1;
  TORCH_CHECK_VALUE(std::strcmp(points, "1") == 0 || std::strcmp(points, "2") == 0 || std::strcmp(points, "4") == 0,
                    "REIDFAST_HOMOGRAPHY_POINTS must be 1, 2 or 4 (output points per thread of the grad_H kernel), "
                    "got '", points, "'");
  return points[0] - '0';
}

at::Tensor homography_warp_forward_cuda(const at::Tensor& img_in, const at::Tensor& H_in, int64_t out_h,
                                        int64_t out_w, c10::string_view padding_mode, bool align_corners) {
  ForwardArgs a = prepare_forward(img_in, H_in, out_h, out_w, padding_mode, c10::DeviceType::CUDA);
  if (a.done) return a.out;
  const c10::cuda::CUDAGuard guard(a.img.device());
  const dim3 blocks = launch_grid(a.img.size(0), out_h * out_w);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Geometry<acc_t> g = make_geometry<acc_t>(a.img, a.out, a.padding, align_corners);
    dispatch_shape(g.C, narrow_offsets(g), [&](auto channels, auto offset) {
      using Off = typename decltype(offset)::type;
      homography_forward_kernel<scalar_t, decltype(channels)::value, Off><<<blocks, kThreads, 0, stream>>>(
          a.img.const_data_ptr<scalar_t>(), a.H.const_data_ptr<acc_t>(), a.out.mutable_data_ptr<scalar_t>(), g);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return a.out;
}

std::tuple<at::Tensor, at::Tensor> homography_warp_backward_cuda(const at::Tensor& grad_out_in,
                                                                 const at::Tensor& img_in, const at::Tensor& H_in,
                                                                 c10::string_view padding_mode, bool align_corners,
                                                                 std::array<bool, 2> output_mask) {
  BackwardArgs a = prepare_backward(grad_out_in, img_in, H_in, padding_mode, output_mask, c10::DeviceType::CUDA);
  const bool need_img = a.need_img, need_h = a.need_h;
  if (need_img) at::globalContext().alertNotDeterministic("homography_warp_backward_cuda (gradient in img)");
  const c10::cuda::CUDAGuard guard(a.img.device());
  const int64_t N = a.img.size(0), points = a.grad_out.size(2) * a.grad_out.size(3);
  const int points_per_thread = need_h && !need_img ? grad_h_points_per_thread(a.img.size(1)) : 1;
  const dim3 blocks = a.empty ? dim3(1, 1) : launch_grid(N, points, points_per_thread);
  // Every block writes its own slot, so the slots need no clearing; the counters of finished blocks do.
  const std::vector<int64_t> slots = {N, need_h && !a.empty ? static_cast<int64_t>(blocks.x) : 0, 9};
  at::Tensor partial = at::empty(slots, a.H.options());
  at::Tensor blocks_done = at::zeros({need_h && !a.empty ? N : 0}, a.H.options().dtype(at::kInt));
  at::Tensor grad_H = !need_h ? at::empty({0}, a.H.options())
                      : a.empty ? at::zeros({N, 3, 3}, a.H.options()) : at::empty({N, 3, 3}, a.H.options());
  if (!a.empty) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const Geometry<acc_t> g = make_geometry<acc_t>(a.img, a.grad_out, a.padding, align_corners);
      const scalar_t* gop = a.grad_out.const_data_ptr<scalar_t>();
      const scalar_t* ip = a.img.const_data_ptr<scalar_t>();
      const acc_t* hp = a.H.const_data_ptr<acc_t>();
      acc_t* gip = need_img ? a.grad_img_acc.mutable_data_ptr<acc_t>() : nullptr;
      acc_t* pp = partial.mutable_data_ptr<acc_t>();
      int* done = blocks_done.mutable_data_ptr<int>();
      acc_t* gh = need_h ? grad_H.mutable_data_ptr<acc_t>() : nullptr;
      dispatch_shape(g.C, narrow_offsets(g), [&](auto channels, auto offset) {
        constexpr int kC = decltype(channels)::value;
        using Off = typename decltype(offset)::type;
        // variant: (which gradients, points per thread) as compile-time constants
        auto launch = [&](auto need_img_c, auto need_h_c, auto points_c) {
          homography_backward_kernel<scalar_t, decltype(need_img_c)::value, decltype(need_h_c)::value, kC, Off,
                                     decltype(points_c)::value><<<blocks, kThreads, 0, stream>>>(
              gop, ip, hp, gip, pp, done, gh, g);
        };
        using Yes = std::true_type;
        using No = std::false_type;
        if (need_img && need_h)
          launch(Yes{}, Yes{}, Points<1>{});
        else if (need_img)
          launch(Yes{}, No{}, Points<1>{});
        else if (points_per_thread == 4)
          launch(No{}, Yes{}, Points<4>{});
        else if (points_per_thread == 2)
          launch(No{}, Yes{}, Points<2>{});
        else
          launch(No{}, Yes{}, Points<1>{});
      });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {finish_grad_img(a), grad_H};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CUDA, m) {
  m.impl("homography_warp_forward", &homography_warp_forward_cuda);
  m.impl("homography_warp_backward", &homography_warp_backward_cuda);
}

}  // namespace homography
}  // namespace reidfast
