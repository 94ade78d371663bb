// AdaIN on the CPU: at::parallel_for over rows (contiguous) or over samples (channels_last).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <vector>

#include "reidfast/adain_checks.h"
#include "reidfast/adain_math.h"

namespace reidfast {
namespace adain {
namespace {

// The row kernels, built twice: for the baseline ISA and for AVX2+FMA, chosen once at run time.
namespace baseline {
#include "adain_rows.h"
}  // namespace baseline
#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "adain_rows.h"
}  // namespace avx2
#pragma GCC pop_options
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#define REIDFAST_AVX2_OR_BASELINE(...) (cpu_has_avx2() ? &avx2::__VA_ARGS__ : &baseline::__VA_ARGS__)
#else
#define REIDFAST_AVX2_OR_BASELINE(...) (&baseline::__VA_ARGS__)
#endif

template <typename scalar_t>
void forward_rows(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const scalar_t* res,
                  at::Tensor& y, at::Tensor& mean, at::Tensor& rstd, int act, double slope, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = x.size(0) * x.size(1), n = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* wp = weight.const_data_ptr<acc_t>();
  const acc_t* bp = bias.const_data_ptr<acc_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* mp = mean.mutable_data_ptr<acc_t>();
  acc_t* rp = rstd.mutable_data_ptr<acc_t>();
  const auto kernel = REIDFAST_AVX2_OR_BASELINE(forward_rows_isa<scalar_t, acc_t>);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    kernel(xp, res, yp, wp, bp, mp, rp, begin, end, n, act, static_cast<acc_t>(slope), eps);
  });
}

// channels_last: element (n, c, i) sits at n*HW*C + i*C + c, so per sample the C statistics advance together
// along the contiguous channel axis.
template <typename scalar_t>
void forward_channels_last(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const scalar_t* res, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd, int act,
                           double slope, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), n = x.size(2) * x.size(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* wp = weight.const_data_ptr<acc_t>();
  const acc_t* bp = bias.const_data_ptr<acc_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* mp = mean.mutable_data_ptr<acc_t>();
  acc_t* rp = rstd.mutable_data_ptr<acc_t>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sum(C), sq(C);
    std::vector<acc_t> mu(C);
    std::vector<RowAffine<acc_t>> aff(C);
    for (int64_t s = begin; s < end; ++s) {
      const scalar_t* base = xp + s * n * C;
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(sq.begin(), sq.end(), 0.0);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<acc_t>(base[i * C + c]);
      for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<acc_t>(sum[c] / n);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = static_cast<acc_t>(base[i * C + c]) - mu[c];
          sq[c] += d * d;
        }
      for (int64_t c = 0; c < C; ++c) {
        const acc_t inv = static_cast<acc_t>(1.0 / std::sqrt(sq[c] / n + eps));
        mp[s * C + c] = mu[c];
        rp[s * C + c] = inv;
        aff[c] = row_affine(mu[c], inv, wp[s * C + c], bp[s * C + c]);
      }
      const acc_t sl = static_cast<acc_t>(slope);
      scalar_t* out = yp + s * n * C;
      const scalar_t* rr = res ? res + s * n * C : nullptr;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) {
          acc_t v = forward_element(static_cast<acc_t>(base[i * C + c]), aff[c], act, sl);
          if (rr) v += static_cast<acc_t>(rr[i * C + c]);
          out[i * C + c] = static_cast<scalar_t>(v);
        }
    }
  });
}

template <typename scalar_t>
void backward_rows(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& gx, at::Tensor& gw, at::Tensor& gb,
                   int act, double slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = x.size(0) * x.size(1), n = x.size(2) * x.size(3);
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const auto kernel = REIDFAST_AVX2_OR_BASELINE(backward_rows_isa<scalar_t, acc_t>);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    kernel(gyp, xp, gxp, weight.const_data_ptr<acc_t>(), bias.const_data_ptr<acc_t>(), mean.const_data_ptr<acc_t>(),
           rstd.const_data_ptr<acc_t>(), gw.mutable_data_ptr<acc_t>(), gb.mutable_data_ptr<acc_t>(), begin, end, n,
           act, static_cast<acc_t>(slope));
  });
}

template <typename scalar_t>
void backward_channels_last(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& gx,
                            at::Tensor& gw, at::Tensor& gb, int act, double slope) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), n = x.size(2) * x.size(3);
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* wp = weight.const_data_ptr<acc_t>();
  const acc_t* bp = bias.const_data_ptr<acc_t>();
  const acc_t* mp = mean.const_data_ptr<acc_t>();
  const acc_t* rp = rstd.const_data_ptr<acc_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  acc_t* gwp = gw.mutable_data_ptr<acc_t>();
  acc_t* gbp = gb.mutable_data_ptr<acc_t>();
  const acc_t s = static_cast<acc_t>(slope);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> sum_g(C), sum_gx(C);
    for (int64_t smp = begin; smp < end; ++smp) {
      const int64_t o = smp * n * C, k = smp * C;
      std::fill(sum_g.begin(), sum_g.end(), 0.0);
      std::fill(sum_gx.begin(), sum_gx.end(), 0.0);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) {
          acc_t xh;
          const acc_t g = grad_preactivation(static_cast<acc_t>(gyp[o + i * C + c]),
                                             static_cast<acc_t>(xp[o + i * C + c]), mp[k + c], rp[k + c],
                                             wp[k + c], bp[k + c], act, s, &xh);
          sum_g[c] += g;
          sum_gx[c] += g * xh;
        }
      for (int64_t c = 0; c < C; ++c) {
        gbp[k + c] = static_cast<acc_t>(sum_g[c]);
        gwp[k + c] = static_cast<acc_t>(sum_gx[c]);
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) {
          acc_t xh;
          const acc_t g = grad_preactivation(static_cast<acc_t>(gyp[o + i * C + c]),
                                             static_cast<acc_t>(xp[o + i * C + c]), mp[k + c], rp[k + c],
                                             wp[k + c], bp[k + c], act, s, &xh);
          gxp[o + i * C + c] = static_cast<scalar_t>(grad_input(g, xh, rp[k + c], wp[k + c],
                                                                static_cast<acc_t>(sum_g[c] / n),
                                                                static_cast<acc_t>(sum_gx[c] / n)));
        }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_forward_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 const c10::optional<at::Tensor>& residual_in,
                                                                 c10::string_view activation, double negative_slope,
                                                                 double eps) {
  ForwardArgs a = prepare_forward(x_in, weight_in, bias_in, residual_in, activation, eps, c10::DeviceType::CPU);
  const at::Tensor &x = a.x, &weight = a.weight, &bias = a.bias, &residual = a.residual;
  at::Tensor &y = a.y, &mean = a.mean, &rstd = a.rstd;
  const auto layout = a.layout;
  const int act = a.act;
  if (x.numel() == 0) return {y, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_forward_cpu", [&] {
    const scalar_t* res = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    if (layout == at::MemoryFormat::ChannelsLast)
      forward_channels_last<scalar_t>(x, weight, bias, res, y, mean, rstd, act, negative_slope, eps);
    else
      forward_rows<scalar_t>(x, weight, bias, res, y, mean, rstd, act, negative_slope, eps);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& bias_in,
    const at::Tensor& mean_in, const at::Tensor& rstd_in, c10::string_view activation, double negative_slope) {
  BackwardArgs a = prepare_backward(grad_y_in, x_in, weight_in, bias_in, mean_in, rstd_in, activation,
                                    c10::DeviceType::CPU);
  const at::Tensor &x = a.x, &gy = a.grad_y, &weight = a.weight, &bias = a.bias, &mean = a.mean, &rstd = a.rstd;
  at::Tensor &gx = a.grad_x, &gw = a.grad_weight, &gb = a.grad_bias;
  const auto layout = a.layout;
  const int act = a.act;
  if (x.numel() == 0) return {gx, gw, gb};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_backward_cpu", [&] {
    if (layout == at::MemoryFormat::ChannelsLast)
      backward_channels_last<scalar_t>(gy, x, weight, bias, mean, rstd, gx, gw, gb, act, negative_slope);
    else
      backward_rows<scalar_t>(gy, x, weight, bias, mean, rstd, gx, gw, gb, act, negative_slope);
  });
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, CPU, m) {
  m.impl("adain_forward", &adain_forward_cpu);
  m.impl("adain_backward", &adain_backward_cpu);
}

}  // namespace adain
}  // namespace reidfast
