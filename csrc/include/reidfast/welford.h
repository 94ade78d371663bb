// Welford's running mean/variance, mergeable (Chan et al.), shared by CPU and CUDA reductions.
// Why Welford: one pass over a row without the cancellation of sum(x^2) - n*mean^2.
#pragma once
#include <c10/macros/Macros.h>

namespace reidfast {

template <typename T>
struct Welford {
  T mean = T(0);
  T m2 = T(0);  // sum of squared deviations from mean
  T count = T(0);

  C10_HOST_DEVICE inline void add(T value) {
    count += T(1);
    const T delta = value - mean;
    mean += delta / count;
    m2 += delta * (value - mean);
  }

  C10_HOST_DEVICE inline void merge(const Welford& other) {
    if (other.count == T(0)) return;
    if (count == T(0)) {
      *this = other;
      return;
    }
    const T total = count + other.count;
    const T delta = other.mean - mean;
    const T other_share = other.count / total;
    mean += delta * other_share;
    m2 += other.m2 + delta * delta * count * other_share;
    count = total;
  }

  // Biased variance (divide by n), the convention of instance normalization.
  C10_HOST_DEVICE inline T biased_var() const { return count > T(0) ? m2 / count : T(0); }
};

}  // namespace reidfast
