// Homography warp on the CPU.
//   Points are processed a tile of one output row at a time, one fixed-size array per quantity: the projection,
//   the padding rule and the bilinear taps of a tile run as loops over its columns that the compiler vectorizes
//   (the per-point math is grid_math.h / homography_math.h, inlined with the padding mode and the corner
//   convention as constants; members of one struct cannot alias, which is what lets those loops vectorize). The
//   forward then samples up to 4 channels at a time on NCHW images (contiguous output runs, each point's taps
//   loaded once for them) and point by point on channels_last ones; the backward goes point by point, each point's
//   taps loaded once for its channels and both gradients, except grad_H alone on NCHW images, which goes up to 4
//   channels at a time like the forward. On NCHW images a block of tiles is swept a few channels at a time
//   (TileBlock). Tap offsets are 32-bit when a channel plane's extent allows it.
//   forward : at::parallel_for over output rows (n, i).
//   backward: tasks of (sample, channel range, row range). When grad_img is needed a task owns whole channels of
//             one sample, so its scatter races with no other task; otherwise tasks split rows. Each task sums its
//             part of grad_H (9 sums, in double) into its own slot, and the slots are added in a fixed order:
//             both gradients are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>  // the AVX2 gathers of grad_xy_channels_gather
#endif

#include "reidfast/grid_math.h"
#include "reidfast/homography_checks.h"
#include "reidfast/homography_math.h"

namespace reidfast {
namespace homography {
namespace {

constexpr int64_t kTile = 64;  // output columns per tile: the tile's arrays stay in L1

struct Geometry {
  int64_t N, C, in_h, in_w, out_h, out_w;
  int64_t in_sn, in_sc, in_sh, in_sw;     // img / grad_img strides
  int64_t out_sn, out_sc, out_sh, out_sw;  // output / grad_out strides
  int padding;
  bool align_corners;
};

Geometry make_geometry(const at::Tensor& img, const at::Tensor& out, int padding, bool align_corners) {
  return {img.size(0),   img.size(1),   img.size(2),   img.size(3),   out.size(2),   out.size(3),
          img.stride(0), img.stride(1), img.stride(2), img.stride(3), out.stride(0), out.stride(1),
          out.stride(2), out.stride(3), padding,       align_corners};
}

bool plane_fits_int32(const Geometry& g) { return homography::plane_fits_int32(g.in_h, g.in_w, g.in_sh, g.in_sw); }

// One tile of one output row: the projected points, and each point's four taps (offsets relative to a channel's
// base, weights, and 0/1 masks). Taps outside the image have offset 0 and weight and mask 0, so the channel loops
// run without branches (when that pixel is not finite, guarded ones: see tap_weighted). The projection's flags and
// the padding's derivatives serve the backward.
template <typename T, typename Off>
struct Tile {
  T x[kTile];
  T gx[kTile], gy[kTile], inv_w[kTile];
  T w_live[kTile], gx_live[kTile], gy_live[kTile];  // 0/1: one element width per loop keeps it vectorizable
  Off off0[kTile], off1[kTile], off2[kTile], off3[kTile];
  T w0[kTile], w1[kTile], w2[kTile], w3[kTile];
  T m0[kTile], m1[kTile], m2[kTile], m3[kTile];
  T px[kTile], py[kTile];  // pixel coordinates after padding
  T tx[kTile], ty[kTile], dpx_dgx[kTile], dpy_dgy[kTile];
  T dpx[kTile], dpy[kTile];  // backward: dL/d(pixel coordinate), summed over channels
  bool any_nan;              // some point's coordinate is NaN (coordinate_is_nan): its taps are off, gx = gy = 0
  T live[kTile];             // 0/1, set only when any_nan: 0 at those points
  int64_t n;                 // columns in use

  Projected<T> projected(int64_t j) const {
    Projected<T> p;
    p.gx = gx[j];
    p.gy = gy[j];
    p.inv_w = inv_w[j];
    p.w_live = w_live[j] != T(0);
    p.gx_live = gx_live[j] != T(0);
    p.gy_live = gy_live[j] != T(0);
    return p;
  }
};

// Columns [j0, j0 + n) of output row y: projection, then taps.
template <typename T, typename Off, int kPadding, bool kAlignCorners>
C10_ALWAYS_INLINE void fill_tile_body(Tile<T, Off>& t, const T* h, const T* xs, T y, int64_t j0, int64_t n,
                                      const Geometry& g) {
  t.n = n;
  // H and the base coordinates copied into storage that cannot alias the tile: otherwise the compiler guards the
  // projection loop with overlap checks, and the loop ran scalar
  T hl[9];
  for (int k = 0; k < 9; ++k) hl[k] = h[k];
  std::copy(xs + j0, xs + j0 + n, t.x);
  for (int64_t j = 0; j < n; ++j) {
    project_parts(hl, t.x[j], y, &t.gx[j], &t.gy[j], &t.inv_w[j], &t.w_live[j], &t.gx_live[j], &t.gy_live[j]);
  }
  // NaN coordinates (coordinate_is_nan) are rare: one sum finds them (the coordinates are clamped, so it is finite
  // unless one is NaN), and only then a scalar pass marks them and moves them to 0, off the vectorized loops
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += t.gx[j] + t.gy[j];
  t.any_nan = sum != sum;
  if (t.any_nan) {
    for (int64_t j = 0; j < n; ++j) {
      const bool live = !coordinate_is_nan(t.gx[j], t.gy[j]);
      t.live[j] = live ? T(1) : T(0);
      if (!live) t.gx[j] = t.gy[j] = T(0);
    }
  }
  // grid::sample_point in two loops (pixel coordinates, then taps), each of which vectorizes
  for (int64_t j = 0; j < n; ++j) {
    t.px[j] = grid::padded_pixel(t.gx[j], g.in_w, kPadding, kAlignCorners, &t.dpx_dgx[j]);
    t.py[j] = grid::padded_pixel(t.gy[j], g.in_h, kPadding, kAlignCorners, &t.dpy_dgy[j]);
  }
  const Off sh = static_cast<Off>(g.in_sh), sw = static_cast<Off>(g.in_sw);
  for (int64_t j = 0; j < n; ++j) {
    const grid::Taps<T> k = grid::bilinear_taps(t.px[j], t.py[j], g.in_w, g.in_h);
    const bool in00 = k.in_x0 & k.in_y0, in01 = k.in_x1 & k.in_y0;
    const bool in10 = k.in_x0 & k.in_y1, in11 = k.in_x1 & k.in_y1;
    const Off o = static_cast<Off>(k.y0) * sh + static_cast<Off>(k.x0) * sw;
    t.off0[j] = in00 ? o : Off(0);
    t.off1[j] = in01 ? o + sw : Off(0);
    t.off2[j] = in10 ? o + sh : Off(0);
    t.off3[j] = in11 ? o + sh + sw : Off(0);
    t.w0[j] = in00 ? k.w00() : T(0);
    t.w1[j] = in01 ? k.w01() : T(0);
    t.w2[j] = in10 ? k.w10() : T(0);
    t.w3[j] = in11 ? k.w11() : T(0);
    t.m0[j] = in00 ? T(1) : T(0);
    t.m1[j] = in01 ? T(1) : T(0);
    t.m2[j] = in10 ? T(1) : T(0);
    t.m3[j] = in11 ? T(1) : T(0);
    t.tx[j] = k.tx;
    t.ty[j] = k.ty;
  }
  if (t.any_nan) {  // the NaN points' taps off: nothing sampled, no gradient scattered, dL/dp = 0
    for (int64_t j = 0; j < n; ++j) {
      if (t.live[j] != T(0)) continue;
      t.off0[j] = t.off1[j] = t.off2[j] = t.off3[j] = Off(0);
      t.w0[j] = t.w1[j] = t.w2[j] = t.w3[j] = T(0);
      t.m0[j] = t.m1[j] = t.m2[j] = t.m3[j] = T(0);
    }
  }
}

// fill_tile compiled twice: for the baseline x86-64 (4 floats a vector) and, where the processor has them, for
// AVX2 (8 floats a vector, chosen at run time). Half of a forward's time went to fill_tile at 4 lanes.
template <typename T, typename Off, int kPadding, bool kAlignCorners>
void fill_tile(Tile<T, Off>& t, const T* h, const T* xs, T y, int64_t j0, int64_t n, const Geometry& g) {
  fill_tile_body<T, Off, kPadding, kAlignCorners>(t, h, xs, y, j0, n, g);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define REIDFAST_HOMOGRAPHY_AVX2 1
template <typename T, typename Off, int kPadding, bool kAlignCorners>
__attribute__((target("avx2"))) void fill_tile_avx2(Tile<T, Off>& t, const T* h, const T* xs, T y, int64_t j0,
                                                    int64_t n, const Geometry& g) {
  fill_tile_body<T, Off, kPadding, kAlignCorners>(t, h, xs, y, j0, n, g);
}

// REIDFAST_CPU_BASELINE=1 keeps to the baseline build (the tests run both).
bool have_avx2() {
  static const bool have = __builtin_cpu_supports("avx2") && std::getenv("REIDFAST_CPU_BASELINE") == nullptr;
  return have;
}
// The AVX2 clone of a function (name_avx2); on builds without clones, the function itself.
#define REIDFAST_AVX2_CLONE(name) name##_avx2
#else
#define REIDFAST_AVX2_CLONE(name) name
#endif

// The build of a function this processor runs: its AVX2 clone where it has AVX2, else the baseline build.
template <typename Fn>
Fn for_this_cpu(Fn baseline, [[maybe_unused]] Fn avx2) {
#ifdef REIDFAST_HOMOGRAPHY_AVX2
  if (have_avx2()) return avx2;
#endif
  return baseline;
}

template <typename T, typename Off>
using FillTile = void (*)(Tile<T, Off>&, const T*, const T*, T, int64_t, int64_t, const Geometry&);

template <typename T, typename Off, int kPadding, bool kAlignCorners>
FillTile<T, Off> fill_tile_for_this_cpu() {
  return for_this_cpu<FillTile<T, Off>>(fill_tile<T, Off, kPadding, kAlignCorners>,
                                        REIDFAST_AVX2_CLONE(fill_tile)<T, Off, kPadding, kAlignCorners>);
}

// The padding mode and the corner convention as compile-time constants of fill_tile.
template <typename T, typename Off>
FillTile<T, Off> select_fill_tile(const Geometry& g) {
  switch (g.padding) {
    case grid::kBorder:
      return g.align_corners ? fill_tile_for_this_cpu<T, Off, grid::kBorder, true>()
                             : fill_tile_for_this_cpu<T, Off, grid::kBorder, false>();
    case grid::kReflection:
      return g.align_corners ? fill_tile_for_this_cpu<T, Off, grid::kReflection, true>()
                             : fill_tile_for_this_cpu<T, Off, grid::kReflection, false>();
    default:
      return g.align_corners ? fill_tile_for_this_cpu<T, Off, grid::kZeros, true>()
                             : fill_tile_for_this_cpu<T, Off, grid::kZeros, false>();
  }
}

// Whether the channel-planar loops apply: unit column strides in both the image and the output.
bool planar(const Geometry& g) { return g.in_sw == 1 && g.out_sw == 1; }

// Up to kBlockTiles tiles of one sample's output, in row-major order, filled once and then swept by channel on NCHW
// images: the forward one channel at a time, the backward kChannelChunk channels at a time (point by point within
// a chunk, so that a point's taps and grad_out serve both gradients), so that only a few channel planes' lines are
// in use across the block. Going through every channel at each point or tile touches C planes at once; planes a
// power of two apart (a 64x32 fp32 plane is 8 KiB) put their lines in the same cache sets: at 64 channels the
// grad_img backward took 6.4-7.2 ms on 64x32 planes against 3.1 ms on 64x33 ones (2 threads), and a
// channel-by-channel grad_H pass 4.30 ms against 2.05 ms.
constexpr int kBlockTiles = 8;
constexpr int64_t kChannelChunk = 4;

template <typename T, typename Off>
struct TileBlock {
  Tile<T, Off> tiles[kBlockTiles];
  int64_t out_offset[kBlockTiles];  // the tile's first element within a channel plane of the output / grad_out
  T y[kBlockTiles];                 // the tile's normalized output row coordinate
  int count;
};

// Fills blocks of up to `capacity` tiles with the tiles of output rows [r0, r1) of one sample (matrix h) and hands
// each to process. A capacity of 1 keeps the one tile in L1 from its fill to its use, for images whose channels
// are all taken at once (blocks are for sweeping many channels).
template <typename T, typename Off, typename Process>
void for_each_block(TileBlock<T, Off>& b, int capacity, FillTile<T, Off> fill, const T* h, const T* xs, int64_t r0,
                    int64_t r1, const Geometry& g, const Process& process) {
  b.count = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const T y = grid::base_coordinate<T>(i, g.out_h, g.align_corners);
    for (int64_t j0 = 0; j0 < g.out_w; j0 += kTile) {
      fill(b.tiles[b.count], h, xs, y, j0, std::min(kTile, g.out_w - j0), g);
      b.out_offset[b.count] = i * g.out_sh + j0 * g.out_sw;
      b.y[b.count] = y;
      if (++b.count == capacity) {
        process(b);
        b.count = 0;
      }
    }
  }
  if (b.count > 0) process(b);
}

// Outside taps point at offset 0, a real pixel, with weight and mask 0. Where that pixel is finite, the plain
// products cancel it and keep the loops as they vectorize best. Where it is NaN or infinite, 0 * it is NaN and
// would turn every outside point into NaN (the reference, grid_sample, and the CUDA kernels add nothing there), so
// the loops run guarded (kGuarded): a select that reads an outside tap as 0. The select everywhere cost 2x in the
// forward (16x3x256x128, one thread: 10.3 -> 20.6 ms), hence the check once per channel plane.
//   tap_weighted: the forward's weight * value. tap_value: the backward's value, 0 outside.
template <bool kGuarded, typename T, typename scalar_t, typename Off>
C10_ALWAYS_INLINE T tap_weighted(const scalar_t* s, Off o, T weight, T mask) {
  const T v = static_cast<T>(s[o]);
  if constexpr (kGuarded) return mask != T(0) ? weight * v : T(0);
  return weight * v;
}

template <bool kGuarded, typename T, typename scalar_t, typename Off>
C10_ALWAYS_INLINE T tap_value(const scalar_t* s, Off o, T mask) {
  const T v = static_cast<T>(s[o]);
  if constexpr (kGuarded) return mask != T(0) ? v : T(0);
  return mask * v;
}

// Whether outside taps need the guarded loops for channels [c0, c1) of a sample (src: its first channel plane).
template <typename scalar_t>
bool offset_zero_not_finite(const scalar_t* src, int64_t c0, int64_t c1, int64_t channel_stride) {
  for (int64_t c = c0; c < c1; ++c)
    if (!std::isfinite(static_cast<double>(src[c * channel_stride]))) return true;
  return false;
}

// The forward on channel-planar images (NCHW): kChannels channels at a time over a tile's points, so that each
// output run is contiguous, each point's taps loaded once for the kChannels channels (GCC compiles this loop
// scalar; AVX2 gathers measured slower, see grad_xy_channels_gather). Point-major order (channels_last) writes to
// C planes per point instead: at 64 channels the forward took twice as long that way.
template <int kChannels, bool kGuarded, typename scalar_t, typename T, typename Off>
C10_ALWAYS_INLINE void sample_channels(const Tile<T, Off>& t, const scalar_t* __restrict__ s, int64_t in_sc,
                                       scalar_t* __restrict__ d, int64_t out_sc) {
  for (int64_t j = 0; j < t.n; ++j) {
    const Off o0 = t.off0[j], o1 = t.off1[j], o2 = t.off2[j], o3 = t.off3[j];
    const T w0 = t.w0[j], w1 = t.w1[j], w2 = t.w2[j], w3 = t.w3[j];
    const T m0 = t.m0[j], m1 = t.m1[j], m2 = t.m2[j], m3 = t.m3[j];
    for (int c = 0; c < kChannels; ++c) {
      const scalar_t* sc = s + c * in_sc;
      d[c * out_sc + j] = static_cast<scalar_t>(tap_weighted<kGuarded>(sc, o0, w0, m0) +
                                                tap_weighted<kGuarded>(sc, o1, w1, m1) +
                                                tap_weighted<kGuarded>(sc, o2, w2, m2) +
                                                tap_weighted<kGuarded>(sc, o3, w3, m3));
    }
  }
}

// f(Channels<K>{}, Guard<G>{}) with K = width, 1 <= width <= kMax, and G = guarded, both read at run time: the
// unrolled variants of a channel loop (sample_channels, grad_xy_channels) for the chunk at hand.
template <int kMax, typename F>
C10_ALWAYS_INLINE void dispatch_width_and_guard(int width, bool guarded, F&& f) {
  if constexpr (kMax > 1) {
    if (width < kMax) return dispatch_width_and_guard<kMax - 1>(width, guarded, f);
  }
  if (guarded)
    f(std::integral_constant<int, kMax>{}, std::true_type{});
  else
    f(std::integral_constant<int, kMax>{}, std::false_type{});
}

// NaN in channels [c0, c1) of the tile's points whose coordinate is NaN (dst: the tile's first output element in
// channel 0); their taps are off, so the sampling loops left 0 there.
template <typename scalar_t, typename T, typename Off>
void fill_nan_points(const Tile<T, Off>& t, scalar_t* dst, int64_t c0, int64_t c1, const Geometry& g) {
  if (!t.any_nan) return;
  for (int64_t j = 0; j < t.n; ++j)
    if (t.live[j] == T(0))
      for (int64_t c = c0; c < c1; ++c) dst[c * g.out_sc + j * g.out_sw] = std::numeric_limits<scalar_t>::quiet_NaN();
}

// src, dst: the sample's first channel plane in the image and in the output.
template <typename scalar_t, typename T, typename Off>
C10_ALWAYS_INLINE void sample_block_planar_body(const TileBlock<T, Off>& b, const scalar_t* src, scalar_t* dst,
                                                const Geometry& g) {
  for (int64_t c = 0; c < g.C;) {
    const int width = static_cast<int>(std::min<int64_t>(kChannelChunk, g.C - c));  // RGB: all 3 at once
    const bool guarded = offset_zero_not_finite(src, c, c + width, g.in_sc);
    for (int k = 0; k < b.count; ++k) {
      dispatch_width_and_guard<static_cast<int>(kChannelChunk)>(width, guarded, [&](auto channels, auto guard) {
        sample_channels<decltype(channels)::value, decltype(guard)::value>(
            b.tiles[k], src + c * g.in_sc, g.in_sc, dst + c * g.out_sc + b.out_offset[k], g.out_sc);
      });
      fill_nan_points(b.tiles[k], dst + b.out_offset[k], c, c + width, g);
    }
    c += width;
  }
}

// Compiled twice: for the baseline x86-64 and, where the processor has it, for AVX2 (chosen at run time, as
// fill_tile).
template <typename scalar_t, typename T, typename Off>
void sample_block_planar(const TileBlock<T, Off>& b, const scalar_t* src, scalar_t* dst, const Geometry& g) {
  sample_block_planar_body(b, src, dst, g);
}

#ifdef REIDFAST_HOMOGRAPHY_AVX2
template <typename scalar_t, typename T, typename Off>
__attribute__((target("avx2"))) void sample_block_planar_avx2(const TileBlock<T, Off>& b, const scalar_t* src,
                                                              scalar_t* dst, const Geometry& g) {
  sample_block_planar_body(b, src, dst, g);
}
#endif

template <typename scalar_t, typename T, typename Off>
using SampleBlock = void (*)(const TileBlock<T, Off>&, const scalar_t*, scalar_t*, const Geometry&);

template <typename scalar_t, typename T, typename Off>
SampleBlock<scalar_t, T, Off> sample_block_planar_for_this_cpu() {
  return for_this_cpu<SampleBlock<scalar_t, T, Off>>(sample_block_planar<scalar_t, T, Off>,
                                                     REIDFAST_AVX2_CLONE(sample_block_planar)<scalar_t, T, Off>);
}

// The output's normalized x coordinates, computed once per task rather than once per point.
template <typename T>
std::vector<T> base_coordinates(int64_t size, bool align_corners) {
  std::vector<T> out(static_cast<size_t>(size));
  for (int64_t j = 0; j < size; ++j) out[j] = grid::base_coordinate<T>(j, size, align_corners);
  return out;
}

// The forward on channels_last images, point by point: a point's taps are loaded once and serve every channel.
template <bool kGuarded, typename scalar_t, typename T, typename Off>
void sample_tile_point_major(const Tile<T, Off>& t, const scalar_t* src, scalar_t* dst, const Geometry& g) {
  for (int64_t j = 0; j < t.n; ++j) {
    const Off o0 = t.off0[j], o1 = t.off1[j], o2 = t.off2[j], o3 = t.off3[j];
    const T w0 = t.w0[j], w1 = t.w1[j], w2 = t.w2[j], w3 = t.w3[j];
    const T m0 = t.m0[j], m1 = t.m1[j], m2 = t.m2[j], m3 = t.m3[j];
    const scalar_t* s = src;
    scalar_t* d = dst + j * g.out_sw;
    for (int64_t c = 0; c < g.C; ++c, s += g.in_sc, d += g.out_sc) {
      *d = static_cast<scalar_t>(tap_weighted<kGuarded>(s, o0, w0, m0) + tap_weighted<kGuarded>(s, o1, w1, m1) +
                                 tap_weighted<kGuarded>(s, o2, w2, m2) + tap_weighted<kGuarded>(s, o3, w3, m3));
    }
  }
}

template <typename scalar_t, typename Off>
void forward_kernel(const at::Tensor& img, const at::Tensor& H, at::Tensor& out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* ip = img.const_data_ptr<scalar_t>();
  const acc_t* hp = H.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const FillTile<acc_t, Off> fill = select_fill_tile<acc_t, Off>(g);
  const SampleBlock<scalar_t, acc_t, Off> sample_planar =
      planar(g) ? sample_block_planar_for_this_cpu<scalar_t, acc_t, Off>() : nullptr;
  const int capacity = sample_planar && g.C > kChannelChunk ? kBlockTiles : 1;
  at::parallel_for(0, g.N * g.out_h, 1, [&](int64_t begin, int64_t end) {
    const std::vector<acc_t> xs = base_coordinates<acc_t>(g.out_w, g.align_corners);
    auto block = std::make_unique<TileBlock<acc_t, Off>>();
    // [begin, end) counts output rows over all samples: one sample's part of it at a time
    for (int64_t row = begin; row < end;) {
      const int64_t n = row / g.out_h, r0 = row % g.out_h, r1 = std::min(g.out_h, r0 + (end - row));
      const scalar_t* src = ip + n * g.in_sn;
      scalar_t* dst = op + n * g.out_sn;
      for_each_block(*block, capacity, fill, hp + n * 9, xs.data(), r0, r1, g, [&](const TileBlock<acc_t, Off>& b) {
        if (sample_planar) {
          sample_planar(b, src, dst, g);
          return;
        }
        const bool guarded = offset_zero_not_finite(src, 0, g.C, g.in_sc);
        for (int k = 0; k < b.count; ++k) {
          if (guarded)
            sample_tile_point_major<true>(b.tiles[k], src, dst + b.out_offset[k], g);
          else
            sample_tile_point_major<false>(b.tiles[k], src, dst + b.out_offset[k], g);
          fill_nan_points(b.tiles[k], dst + b.out_offset[k], 0, g.C, g);
        }
      });
      row += r1 - r0;
    }
  });
}

// Both backward sums for one tile over channels [c0, c1), point by point: each point's taps are loaded once, and one
// pass over its channels reads grad_out once for dL/d(pixel coordinate) (into t.dpx, t.dpy, when need_h; added to
// what they hold when accumulate) and for grad_img's scatter (when gsrc is non-null).
template <bool kGuarded, typename scalar_t, typename T, typename Off>
void backward_tile_point_major(Tile<T, Off>& t, const scalar_t* go, const scalar_t* src, T* gsrc, bool need_h,
                               int64_t c0, int64_t c1, bool accumulate, const Geometry& g) {
  for (int64_t j = 0; j < t.n; ++j) {
    const Off o0 = t.off0[j], o1 = t.off1[j], o2 = t.off2[j], o3 = t.off3[j];
    const T w0 = t.w0[j], w1 = t.w1[j], w2 = t.w2[j], w3 = t.w3[j];
    const T m0 = t.m0[j], m1 = t.m1[j], m2 = t.m2[j], m3 = t.m3[j];
    grid::Taps<T> k;
    k.tx = t.tx[j];
    k.ty = t.ty[j];
    T dpx = accumulate ? t.dpx[j] : T(0), dpy = accumulate ? t.dpy[j] : T(0);
    for (int64_t c = c0; c < c1; ++c) {
      const T v = static_cast<T>(go[j * g.out_sw + c * g.out_sc]);
      if (need_h) {
        const scalar_t* s = src + c * g.in_sc;
        T vx, vy;
        grid::interpolate_grad_xy(k, tap_value<kGuarded>(s, o0, m0), tap_value<kGuarded>(s, o1, m1),
                                  tap_value<kGuarded>(s, o2, m2), tap_value<kGuarded>(s, o3, m3), &vx, &vy);
        dpx += v * vx;
        dpy += v * vy;
      }
      if (gsrc) {
        T* gs = gsrc + c * g.in_sc;
        // Taps outside the image have weight 0 and offset 0: adding 0 there is harmless (unless grad_out itself
        // is NaN or infinite at that point, when the gradients are not finite anyway).
        gs[o0] += v * w0;
        gs[o1] += v * w1;
        gs[o2] += v * w2;
        gs[o3] += v * w3;
      }
    }
    t.dpx[j] = dpx;
    t.dpy[j] = dpy;
  }
}

// grad_H alone on channel-planar images (NCHW): kChannels channels at a time over a tile's points, adding their
// part of dL/d(pixel coordinate) to t.dpx, t.dpy, each point's taps loaded once for the kChannels channels (the
// generic loop; fp32 takes grad_xy_channels_gather in the AVX2 build). Point by point with a few channels each, as
// it was, that backward took longer than grid_sample's at 8x64x64x32.
template <int kChannels, bool kGuarded, typename scalar_t, typename T, typename Off>
C10_ALWAYS_INLINE void grad_xy_channels(Tile<T, Off>& t, const scalar_t* __restrict__ s, int64_t in_sc,
                                        const scalar_t* __restrict__ go, int64_t out_sc, int64_t j0 = 0) {
  for (int64_t j = j0; j < t.n; ++j) {
    const Off o0 = t.off0[j], o1 = t.off1[j], o2 = t.off2[j], o3 = t.off3[j];
    const T m0 = t.m0[j], m1 = t.m1[j], m2 = t.m2[j], m3 = t.m3[j];
    grid::Taps<T> k;
    k.tx = t.tx[j];
    k.ty = t.ty[j];
    T dpx = t.dpx[j], dpy = t.dpy[j];
    for (int c = 0; c < kChannels; ++c) {
      const scalar_t* sc = s + c * in_sc;
      const T v = static_cast<T>(go[c * out_sc + j]);
      T vx, vy;
      grid::interpolate_grad_xy(k, tap_value<kGuarded>(sc, o0, m0), tap_value<kGuarded>(sc, o1, m1),
                                tap_value<kGuarded>(sc, o2, m2), tap_value<kGuarded>(sc, o3, m3), &vx, &vy);
      dpx += v * vx;
      dpy += v * vy;
    }
    t.dpx[j] = dpx;
    t.dpy[j] = dpy;
  }
}

#ifdef REIDFAST_HOMOGRAPHY_AVX2
// AVX2 gathers for the common case (fp32 image, 32-bit offsets, finite pixel at offset 0): 8 points at a time,
// their taps loaded once for the kChannels channels; the sums in the generic loop's order, the last n % 8 points
// by the generic loop. GCC leaves these loops scalar. Whether they pay off depends on the processor's gathers
// (gathers_pay_off). Measured against the scalar loop (2 threads) on an AMD EPYC with AVX-512: grad_H backward
// 0.74 -> 0.64 ms at 8x64x64x32 and 2.37 -> 2.13 ms at 16x3x256x128; the same gathers in the forward's sampling,
// which has less arithmetic per tap, were slower (0.44 -> 0.52 ms and 1.22 -> 1.35 ms), so the forward stays scalar.
template <int kChannels>
__attribute__((target("avx2"))) inline void grad_xy_channels_gather(Tile<float, int32_t>& t, const float* s,
                                                                    int64_t in_sc, const float* go, int64_t out_sc) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t j = 0;
  for (; j + 8 <= t.n; j += 8) {
    const __m256i o0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.off0 + j));
    const __m256i o1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.off1 + j));
    const __m256i o2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.off2 + j));
    const __m256i o3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.off3 + j));
    const __m256 m0 = _mm256_loadu_ps(t.m0 + j), m1 = _mm256_loadu_ps(t.m1 + j);
    const __m256 m2 = _mm256_loadu_ps(t.m2 + j), m3 = _mm256_loadu_ps(t.m3 + j);
    const __m256 tx = _mm256_loadu_ps(t.tx + j), ty = _mm256_loadu_ps(t.ty + j);
    const __m256 ux = _mm256_sub_ps(one, tx), uy = _mm256_sub_ps(one, ty);
    __m256 dpx = _mm256_loadu_ps(t.dpx + j), dpy = _mm256_loadu_ps(t.dpy + j);
    for (int c = 0; c < kChannels; ++c) {
      const float* sc = s + c * in_sc;
      const __m256 v = _mm256_loadu_ps(go + c * out_sc + j);
      const __m256 v00 = _mm256_mul_ps(m0, _mm256_i32gather_ps(sc, o0, 4));
      const __m256 v01 = _mm256_mul_ps(m1, _mm256_i32gather_ps(sc, o1, 4));
      const __m256 v10 = _mm256_mul_ps(m2, _mm256_i32gather_ps(sc, o2, 4));
      const __m256 v11 = _mm256_mul_ps(m3, _mm256_i32gather_ps(sc, o3, 4));
      // grid::interpolate_grad_xy, term by term
      const __m256 vx = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v01, v00), uy),
                                      _mm256_mul_ps(_mm256_sub_ps(v11, v10), ty));
      const __m256 vy = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v10, v00), ux),
                                      _mm256_mul_ps(_mm256_sub_ps(v11, v01), tx));
      dpx = _mm256_add_ps(dpx, _mm256_mul_ps(v, vx));
      dpy = _mm256_add_ps(dpy, _mm256_mul_ps(v, vy));
    }
    _mm256_storeu_ps(t.dpx + j, dpx);
    _mm256_storeu_ps(t.dpy + j, dpy);
  }
  grad_xy_channels<kChannels, false>(t, s, in_sc, go, out_sc, j);
}
#endif

// Whether grad_xy_channels takes the AVX2 gathers: in their build (kUseGathers: the AVX2 clone where
// gathers_pay_off), for fp32 images with 32-bit offsets.
template <bool kUseGathers, typename scalar_t, typename T, typename Off>
constexpr bool kGathers = kUseGathers && std::is_same_v<scalar_t, float> && std::is_same_v<T, float> &&
                          std::is_same_v<Off, int32_t>;

// Whether the grad_H loop on this processor takes the AVX2 gathers (grad_xy_channels_gather). Their speed varies
// across processors more than the scalar loop's. On 2-core VMs (fp32, 2 threads, grad_H backward), gathers took an
// AMD EPYC with AVX-512 (Zen 4 or later) from 2.37 to 2.13 ms at 16x3x256x128, but an AMD Zen 3 (AVX2 alone) from
// 7.5-8.1 to 9.1-10.7 ms there and from 8.4-9.0 to 12.0-13.9 ms at 16x4x256x128. So on where the processor has
// AVX-512F and off elsewhere (not measured on Intel processors); REIDFAST_CPU_GATHERS=1 or 0 forces the choice where
// the processor has AVX2 (the tests run both). Read once; the backward asks before its parallel loop, so that a bad
// value raises there.
#ifdef REIDFAST_HOMOGRAPHY_AVX2
bool gathers_pay_off() {
  static const bool use = [] {
    const char* v = std::getenv("REIDFAST_CPU_GATHERS");
    if (v == nullptr || v[0] == '\0') return have_avx2() && __builtin_cpu_supports("avx512f") != 0;
    TORCH_CHECK_VALUE(std::strcmp(v, "0") == 0 || std::strcmp(v, "1") == 0,
                      "REIDFAST_CPU_GATHERS must be 0 or 1 (whether the CPU grad_H loop of homography_warp uses "
                      "AVX2 gathers), got '", v, "'");
    return v[0] == '1' && have_avx2();
  }();
  return use;
}
#else
bool gathers_pay_off() { return false; }
#endif

// dL/d(pixel coordinate) of a block's points over channels [c0, c1), a few channel planes at a time across the
// block (see TileBlock); src, go: the sample's first channel plane in the image and in grad_out.
template <bool kUseGathers, typename scalar_t, typename T, typename Off>
C10_ALWAYS_INLINE void grad_xy_block_planar_body(TileBlock<T, Off>& b, const scalar_t* src, const scalar_t* go,
                                                 int64_t c0, int64_t c1, const Geometry& g) {
  constexpr int kChannels = static_cast<int>(kChannelChunk);
  for (int k = 0; k < b.count; ++k) {
    std::fill(b.tiles[k].dpx, b.tiles[k].dpx + b.tiles[k].n, T(0));
    std::fill(b.tiles[k].dpy, b.tiles[k].dpy + b.tiles[k].n, T(0));
  }
  for (int64_t c = c0; c < c1;) {
    const int width = static_cast<int>(std::min<int64_t>(kChannels, c1 - c));  // RGB: all 3 at once
    const bool guarded = offset_zero_not_finite(src, c, c + width, g.in_sc);
    const scalar_t* s = src + c * g.in_sc;
    for (int k = 0; k < b.count; ++k)
      dispatch_width_and_guard<kChannels>(width, guarded, [&](auto channels, auto guard) {
        constexpr int kC = decltype(channels)::value;
        constexpr bool kGuarded = decltype(guard)::value;
        const scalar_t* gk = go + c * g.out_sc + b.out_offset[k];
#ifdef REIDFAST_HOMOGRAPHY_AVX2
        if constexpr (!kGuarded && kGathers<kUseGathers, scalar_t, T, Off>) {
          grad_xy_channels_gather<kC>(b.tiles[k], s, g.in_sc, gk, g.out_sc);
          return;
        }
#endif
        grad_xy_channels<kC, kGuarded>(b.tiles[k], s, g.in_sc, gk, g.out_sc);
      });
    c += width;
  }
}

template <typename scalar_t, typename T, typename Off>
void grad_xy_block_planar(TileBlock<T, Off>& b, const scalar_t* src, const scalar_t* go, int64_t c0, int64_t c1,
                          const Geometry& g) {
  grad_xy_block_planar_body<false>(b, src, go, c0, c1, g);
}

#ifdef REIDFAST_HOMOGRAPHY_AVX2
// The AVX2 clone, with the gathers (kUseGathers) or with the scalar loop of the baseline build
template <typename scalar_t, typename T, typename Off, bool kUseGathers>
__attribute__((target("avx2"))) void grad_xy_block_planar_avx2(TileBlock<T, Off>& b, const scalar_t* src,
                                                               const scalar_t* go, int64_t c0, int64_t c1,
                                                               const Geometry& g) {
  grad_xy_block_planar_body<kUseGathers>(b, src, go, c0, c1, g);
}
#endif

template <typename scalar_t, typename T, typename Off>
using GradXYBlock = void (*)(TileBlock<T, Off>&, const scalar_t*, const scalar_t*, int64_t, int64_t,
                             const Geometry&);

template <typename scalar_t, typename T, typename Off>
GradXYBlock<scalar_t, T, Off> grad_xy_block_planar_for_this_cpu() {
#ifdef REIDFAST_HOMOGRAPHY_AVX2
  return for_this_cpu<GradXYBlock<scalar_t, T, Off>>(grad_xy_block_planar<scalar_t, T, Off>,
                                                     gathers_pay_off()
                                                         ? grad_xy_block_planar_avx2<scalar_t, T, Off, true>
                                                         : grad_xy_block_planar_avx2<scalar_t, T, Off, false>);
#else
  return grad_xy_block_planar<scalar_t, T, Off>;
#endif
}

// Backward over one task: sample n, channels [c0, c1), output rows [r0, r1). Adds this task's grad_H part to
// gh[9] and, when gi is non-null, scatters into gi (acc_t buffer with img's strides).
template <typename scalar_t, typename Off>
void backward_task(const scalar_t* gop, const scalar_t* ip, const at::opmath_type<scalar_t>* h,
                   at::opmath_type<scalar_t>* gi, bool need_h, const Geometry& g, int64_t n, int64_t c0,
                   int64_t c1, int64_t r0, int64_t r1, double* gh, TileBlock<at::opmath_type<scalar_t>, Off>& block) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* src = ip + n * g.in_sn;
  const scalar_t* go = gop + n * g.out_sn;
  acc_t* gsrc = gi ? gi + n * g.in_sn : nullptr;
  const FillTile<acc_t, Off> fill = select_fill_tile<acc_t, Off>(g);
  // NCHW: kChannelChunk channels at a time over the block (see TileBlock); channels_last: a point's channels are
  // adjacent, all at once.
  const int64_t chunk = g.in_sc == 1 ? std::max<int64_t>(1, c1 - c0) : kChannelChunk;
  const int capacity = c1 - c0 > chunk ? kBlockTiles : 1;
  const std::vector<acc_t> xs = base_coordinates<acc_t>(g.out_w, g.align_corners);
  // grad_H alone on NCHW images: a few channels at a time over the points (grad_xy_block_planar). With grad_img
  // too, the point-major loop serves both from one read of grad_out (a separate grad_H pass before the scatter, in
  // its scalar form, was slower: 1.93-2.00 against 1.70-1.82 ms at 8x64x64x32, 4.84 against 4.32 ms at
  // 16x3x256x128, 2 threads).
  const GradXYBlock<scalar_t, acc_t, Off> grad_xy_planar =
      !gsrc && need_h && planar(g) && g.in_sc != 1 ? grad_xy_block_planar_for_this_cpu<scalar_t, acc_t, Off>()
                                                   : nullptr;
  for_each_block(block, capacity, fill, h, xs.data(), r0, r1, g, [&](TileBlock<acc_t, Off>& b) {
    if (grad_xy_planar) grad_xy_planar(b, src, go, c0, c1, g);
    for (int64_t cc = c0; cc < c1 && !grad_xy_planar; cc += chunk) {
      const int64_t ce = std::min(c1, cc + chunk);
      const bool guarded = need_h && offset_zero_not_finite(src, cc, ce, g.in_sc);
      for (int k = 0; k < b.count; ++k) {
        if (guarded)
          backward_tile_point_major<true>(b.tiles[k], go + b.out_offset[k], src, gsrc, need_h, cc, ce, cc != c0, g);
        else
          backward_tile_point_major<false>(b.tiles[k], go + b.out_offset[k], src, gsrc, need_h, cc, ce, cc != c0, g);
      }
    }
    if (!need_h) return;
    // grad_H: each point's coefficients times (x, y, 1), summed per tile in double, then into gh
    for (int k = 0; k < b.count; ++k) {
      const Tile<acc_t, Off>& t = b.tiles[k];
      double ax[3] = {0, 0, 0}, a1[3] = {0, 0, 0};  // the tile's sums of a * x and of a
      for (int64_t j = 0; j < t.n; ++j) {
        acc_t a[3];
        grad_coefficients(t.projected(j), t.dpx[j] * t.dpx_dgx[j], t.dpy[j] * t.dpy_dgy[j], a);
        if (t.any_nan && t.live[j] == acc_t(0)) a[0] = a[1] = a[2] = std::numeric_limits<acc_t>::quiet_NaN();
        const double x = static_cast<double>(t.x[j]);
        for (int e = 0; e < 3; ++e) {
          ax[e] += static_cast<double>(a[e]) * x;
          a1[e] += static_cast<double>(a[e]);
        }
      }
      for (int e = 0; e < 3; ++e) {
        gh[e * 3 + 0] += ax[e];
        gh[e * 3 + 1] += a1[e] * static_cast<double>(b.y[k]);
        gh[e * 3 + 2] += a1[e];
      }
    }
  });
}

at::Tensor homography_warp_forward_cpu(const at::Tensor& img_in, const at::Tensor& H_in, int64_t out_h,
                                       int64_t out_w, c10::string_view padding_mode, bool align_corners) {
  ForwardArgs a = prepare_forward(img_in, H_in, out_h, out_w, padding_mode, c10::DeviceType::CPU);
  if (a.done) return a.out;
  const Geometry g = make_geometry(a.img, a.out, a.padding, align_corners);
  const bool narrow = plane_fits_int32(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_forward_cpu", [&] {
    if (narrow) {
      forward_kernel<scalar_t, int32_t>(a.img, a.H, a.out, g);
    } else {
      forward_kernel<scalar_t, int64_t>(a.img, a.H, a.out, g);
    }
  });
  return a.out;
}

template <typename scalar_t, typename Off>
void backward_kernel(const BackwardArgs& a, const Geometry& g, at::Tensor& grad_H) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool need_img = a.need_img, need_h = a.need_h;
  // Split work into at least ~4 tasks per thread where the data allows it.
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t per_sample = std::max<int64_t>(1, (want + g.N - 1) / g.N);
  const int64_t c_groups = need_img ? std::min<int64_t>(g.C, per_sample) : 1;
  const int64_t r_groups = need_img ? 1 : std::min<int64_t>(g.out_h, per_sample);
  const int64_t tasks_per_sample = c_groups * r_groups;
  std::vector<double> partial(static_cast<size_t>(g.N * tasks_per_sample * 9), 0.0);

  const scalar_t* gop = a.grad_out.const_data_ptr<scalar_t>();
  const scalar_t* ip = a.img.const_data_ptr<scalar_t>();
  const acc_t* hp = a.H.const_data_ptr<acc_t>();
  acc_t* gip = need_img ? a.grad_img_acc.mutable_data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, g.N * tasks_per_sample, 1, [&](int64_t begin, int64_t end) {
    auto block = std::make_unique<TileBlock<acc_t, Off>>();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tasks_per_sample, k = t % tasks_per_sample;
      const int64_t cg = k / r_groups, rg = k % r_groups;
      const int64_t c0 = g.C * cg / c_groups, c1 = g.C * (cg + 1) / c_groups;
      const int64_t r0 = g.out_h * rg / r_groups, r1 = g.out_h * (rg + 1) / r_groups;
      backward_task<scalar_t, Off>(gop, ip, hp + n * 9, gip, need_h, g, n, c0, c1, r0, r1, &partial[t * 9],
                                   *block);
    }
  });
  if (need_h) {
    acc_t* ghp = grad_H.mutable_data_ptr<acc_t>();
    for (int64_t n = 0; n < g.N; ++n) {
      for (int e = 0; e < 9; ++e) {
        double s = 0.0;
        for (int64_t k = 0; k < tasks_per_sample; ++k) s += partial[(n * tasks_per_sample + k) * 9 + e];
        ghp[n * 9 + e] = static_cast<acc_t>(s);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> homography_warp_backward_cpu(const at::Tensor& grad_out_in,
                                                                const at::Tensor& img_in, const at::Tensor& H_in,
                                                                c10::string_view padding_mode, bool align_corners,
                                                                std::array<bool, 2> output_mask) {
  BackwardArgs a = prepare_backward(grad_out_in, img_in, H_in, padding_mode, output_mask, c10::DeviceType::CPU);
  at::Tensor grad_H = a.need_h ? at::zeros({a.img.size(0), 3, 3}, a.H.options()) : at::empty({0}, a.H.options());
  if (a.empty) return {finish_grad_img(a), grad_H};
  gathers_pay_off();  // reads REIDFAST_CPU_GATHERS here, outside the parallel loop
  const Geometry g = make_geometry(a.img, a.grad_out, a.padding, align_corners);
  const bool narrow = plane_fits_int32(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_backward_cpu", [&] {
    if (narrow) {
      backward_kernel<scalar_t, int32_t>(a, g, grad_H);
    } else {
      backward_kernel<scalar_t, int64_t>(a, g, grad_H);
    }
  });
  return {finish_grad_img(a), grad_H};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("homography_warp_forward", &homography_warp_forward_cpu);
  m.impl("homography_warp_backward", &homography_warp_backward_cpu);
}

}  // namespace homography
}  // namespace reidfast
