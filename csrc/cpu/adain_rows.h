// Row kernels of the CPU AdaIN, included twice by adain.cpp: once built for the baseline ISA and once for
// AVX2+FMA (picked at run time), so the same source vectorizes 8-wide on machines that have it.
// Written for auto-vectorization: raw __restrict pointers, the activation a template parameter (no branch in
// the loops), reductions under `omp simd`.
// Include only from adain.cpp, inside a namespace; needs adain_math.h.

template <typename acc_t, typename F>
inline void pair_sums(int64_t n, F term, double* out0, double* out1) {
  // `omp simd reduction` licenses the reordering a vectorized float sum needs (plain -O3 may not reorder);
  // blocks of 1024 elements are folded into doubles so long rows keep their precision.
  double t0 = 0.0, t1 = 0.0;
  for (int64_t start = 0; start < n; start += 1024) {
    const int64_t end = std::min(n, start + 1024);
    acc_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = start; i < end; ++i) term(i, a, b);
    t0 += static_cast<double>(a);
    t1 += static_cast<double>(b);
  }
  *out0 = t0;
  *out1 = t1;
}

template <int kAct, typename scalar_t, typename acc_t>
void forward_row(const scalar_t* __restrict x, const scalar_t* __restrict res, scalar_t* __restrict y, int64_t n,
                 acc_t w, acc_t b, acc_t slope, double eps, acc_t* mean_out, acc_t* rstd_out) {
  // Shifted sums (shift = the row's first element) give mean and variance in one read without the cancellation
  // of raw sums when |mean| >> std; the CUDA kernel uses the same scheme.
  const acc_t shift = static_cast<acc_t>(x[0]);
  double s1, s2;
  pair_sums<acc_t>(n, [x, shift](int64_t i, acc_t& a, acc_t& b) {
    const acc_t d = static_cast<acc_t>(x[i]) - shift;
    a += d;
    b += d * d;
  }, &s1, &s2);
  const double m1 = s1 / n;
  const double var = std::max(s2 / n - m1 * m1, 0.0);
  const acc_t mean = static_cast<acc_t>(shift + m1);
  const acc_t rstd = static_cast<acc_t>(1.0 / std::sqrt(var + eps));
  *mean_out = mean;
  *rstd_out = rstd;
  const acc_t scale = rstd * w;
  if (res != nullptr) {
    for (int64_t i = 0; i < n; ++i)
      y[i] = static_cast<scalar_t>(activate<acc_t>((static_cast<acc_t>(x[i]) - mean) * scale + b, kAct, slope) +
                                   static_cast<acc_t>(res[i]));
  } else {
    for (int64_t i = 0; i < n; ++i)
      y[i] = static_cast<scalar_t>(activate<acc_t>((static_cast<acc_t>(x[i]) - mean) * scale + b, kAct, slope));
  }
}

template <int kAct, typename scalar_t, typename acc_t>
void backward_row(const scalar_t* __restrict gy, const scalar_t* __restrict x, scalar_t* __restrict gx, int64_t n,
                  acc_t mean, acc_t rstd, acc_t w, acc_t b, acc_t slope, acc_t* gw_out, acc_t* gb_out) {
  double sum_g, sum_gx;
  pair_sums<acc_t>(n, [=](int64_t i, acc_t& a, acc_t& c) {
    acc_t xh;
    const acc_t g = grad_preactivation(static_cast<acc_t>(gy[i]), static_cast<acc_t>(x[i]), mean, rstd, w, b, kAct,
                                       slope, &xh);
    a += g;
    c += g * xh;
  }, &sum_g, &sum_gx);
  *gb_out = static_cast<acc_t>(sum_g);
  *gw_out = static_cast<acc_t>(sum_gx);
  const acc_t mg = static_cast<acc_t>(sum_g / n), mgx = static_cast<acc_t>(sum_gx / n);
  for (int64_t i = 0; i < n; ++i) {
    acc_t xh;
    const acc_t g = grad_preactivation(static_cast<acc_t>(gy[i]), static_cast<acc_t>(x[i]), mean, rstd, w, b, kAct,
                                       slope, &xh);
    gx[i] = static_cast<scalar_t>(grad_input(g, xh, rstd, w, mg, mgx));
  }
}

// Rows [row_begin, row_end), each under the activation made a compile-time constant.
template <typename scalar_t, typename acc_t>
void forward_rows_isa(const scalar_t* x, const scalar_t* res, scalar_t* y, const acc_t* w, const acc_t* b,
                      acc_t* mean, acc_t* rstd, int64_t row_begin, int64_t row_end, int64_t n, int act, acc_t slope,
                      double eps) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const scalar_t* rr = res ? res + r * n : nullptr;
    if (act == kRelu)
      forward_row<kRelu>(x + r * n, rr, y + r * n, n, w[r], b[r], slope, eps, mean + r, rstd + r);
    else if (act == kLeakyRelu)
      forward_row<kLeakyRelu>(x + r * n, rr, y + r * n, n, w[r], b[r], slope, eps, mean + r, rstd + r);
    else
      forward_row<kNone>(x + r * n, rr, y + r * n, n, w[r], b[r], slope, eps, mean + r, rstd + r);
  }
}

template <typename scalar_t, typename acc_t>
void backward_rows_isa(const scalar_t* gy, const scalar_t* x, scalar_t* gx, const acc_t* w, const acc_t* b,
                       const acc_t* mean, const acc_t* rstd, acc_t* gw, acc_t* gb, int64_t row_begin,
                       int64_t row_end, int64_t n, int act, acc_t slope) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t o = r * n;
    if (act == kRelu)
      backward_row<kRelu>(gy + o, x + o, gx + o, n, mean[r], rstd[r], w[r], b[r], slope, gw + r, gb + r);
    else if (act == kLeakyRelu)
      backward_row<kLeakyRelu>(gy + o, x + o, gx + o, n, mean[r], rstd[r], w[r], b[r], slope, gw + r, gb + r);
    else
      backward_row<kNone>(gy + o, x + o, gx + o, n, mean[r], rstd[r], w[r], b[r], slope, gw + r, gb + r);
  }
}
