// Summing K values over the 32 lanes of a warp with K + a few shuffles instead of 5 K (reduce-scatter).
//
// Five rounds, with partner lane = lane ^ M for M = 16, 8, 4, 2, 1. Each round halves the list of items a lane
// carries: the lower lane of a pair (lane & M == 0) keeps the first ceil(K/2) items, the upper lane the rest
// (padded with zeros to the same count), and each lane sends its partner, one shuffle per kept position, its copy
// of the item the partner keeps. After the last round every item's sum over the warp sits in exactly one lane,
// lane_of_item(item); the other lanes hold partial sums or padding, to be ignored. For K = 9 (the homography
// warp's grad_H entries) that is 5 + 3 + 2 + 1 + 1 = 12 shuffles instead of 45.
//
// The round's arithmetic (scatter_send / scatter_keep) and lane_of_item are host-and-device code: the C++ test
// program runs the five rounds over 32 emulated lanes and checks every item's sum against a plain sum.
#pragma once
#include <c10/macros/Macros.h>

namespace reidfast {
namespace warp {

constexpr int kLanes = 32;

// Items a lane carries after a round that started with K.
constexpr int kept_after(int K) { return (K + 1) / 2; }

// What a lane sends its partner for kept position t, when the round starts with K items v[0..K).
template <int K, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T scatter_send(const T* v, int t, bool upper) {
  constexpr int h = kept_after(K);
  return upper ? v[t] : (h + t < K ? v[h + t] : T(0));
}

// The lane's own copy of the item at kept position t.
template <int K, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T scatter_keep(const T* v, int t, bool upper) {
  constexpr int h = kept_after(K);
  return upper ? (h + t < K ? v[h + t] : T(0)) : v[t];
}

// The lane that ends up with item's sum (item < K), for a warp-wide reduce-scatter of K items.
template <int K>
C10_HOST_DEVICE inline int lane_of_item(int item) {
  int lane = 0, count = K, pos = item;
  for (int m = kLanes / 2; m >= 1; m /= 2) {
    const int h = kept_after(count);
    if (pos >= h) {  // kept by the upper lane of this round's pairs
      lane |= m;
      pos -= h;
    }
    count = h;
  }
  return lane;
}

#ifdef __CUDACC__
// One round at partner distance M, then the remaining rounds; returns the lane's final value (item
// lane_of_item^-1(lane)'s warp sum where the lane is one of the K owners). All 32 lanes must take part.
template <int K, int M, typename T>
__device__ __forceinline__ T reduce_scatter_rounds(const T* v) {
  constexpr int h = kept_after(K);
  const bool upper = (threadIdx.x & M) != 0;
  T next[h];
#pragma unroll
  for (int t = 0; t < h; ++t)
    next[t] = scatter_keep<K>(v, t, upper) + __shfl_xor_sync(0xffffffffu, scatter_send<K>(v, t, upper), M);
  if constexpr (M > 1) {
    return reduce_scatter_rounds<h, M / 2>(next);
  } else {
    return next[0];
  }
}

template <int K, typename T>
__device__ __forceinline__ T reduce_scatter(const T (&v)[K]) {
  return reduce_scatter_rounds<K, kLanes / 2>(v);
}
#endif

}  // namespace warp
}  // namespace reidfast
