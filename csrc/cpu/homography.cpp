// Homography warp on the CPU.
//   forward : at::parallel_for over output rows (n, i); a row's projections are computed first (a loop the
//             compiler can vectorize), then each point's taps once, reused for every channel.
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
#include <vector>

#include "reidfast/grid_math.h"
#include "reidfast/homography_checks.h"
#include "reidfast/homography_math.h"

namespace reidfast {
namespace homography {
namespace {

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

// One sampling point, resolved to four tap offsets (relative to a channel's base) and weights. Taps outside the
// image get offset 0 and weight/mask 0, so the channel loops run without branches. proj is filled by the
// backward, which needs it for the gradient in H.
template <typename T>
struct ResolvedPoint {
  int64_t off[4];
  T weight[4];
  T mask[4];
  grid::SamplePoint<T> sp;
  Projected<T> proj;
};

template <typename T>
C10_ALWAYS_INLINE ResolvedPoint<T> resolve_sample(T gx, T gy, const Geometry& g) {
  ResolvedPoint<T> r;
  r.sp = grid::sample_point(gx, gy, g.in_w, g.in_h, g.padding, g.align_corners);
  const grid::Taps<T>& t = r.sp.taps;
  const bool in[4] = {t.in_x0 && t.in_y0, t.in_x1 && t.in_y0, t.in_x0 && t.in_y1, t.in_x1 && t.in_y1};
  const int64_t xs[4] = {t.x0, t.x0 + 1, t.x0, t.x0 + 1};
  const int64_t ys[4] = {t.y0, t.y0, t.y0 + 1, t.y0 + 1};
  const T w[4] = {t.w00(), t.w01(), t.w10(), t.w11()};
  for (int k = 0; k < 4; ++k) {
    r.off[k] = in[k] ? ys[k] * g.in_sh + xs[k] * g.in_sw : 0;
    r.weight[k] = in[k] ? w[k] : T(0);
    r.mask[k] = in[k] ? T(1) : T(0);
  }
  return r;
}

// The output's normalized x coordinates, computed once per task rather than once per point.
template <typename T>
std::vector<T> base_coordinates(int64_t size, bool align_corners) {
  std::vector<T> out(static_cast<size_t>(size));
  for (int64_t j = 0; j < size; ++j) out[j] = grid::base_coordinate<T>(j, size, align_corners);
  return out;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& img, const at::Tensor& H, at::Tensor& out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* ip = img.const_data_ptr<scalar_t>();
  const acc_t* hp = H.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.N * g.out_h, 1, [&](int64_t begin, int64_t end) {
    const std::vector<acc_t> xs = base_coordinates<acc_t>(g.out_w, g.align_corners);
    // A row's projected coordinates are computed first in a loop of their own: it has no loads beyond xs, so
    // the compiler can vectorize it and the divisions overlap instead of stalling each point's taps.
    std::vector<acc_t> gxs(g.out_w), gys(g.out_w);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.out_h, i = row % g.out_h;
      const acc_t* h = hp + n * 9;
      const acc_t y = grid::base_coordinate<acc_t>(i, g.out_h, g.align_corners);
      for (int64_t j = 0; j < g.out_w; ++j) {
        const Projected<acc_t> pr = project(h, xs[j], y);
        gxs[j] = pr.gx;
        gys[j] = pr.gy;
      }
      const scalar_t* src = ip + n * g.in_sn;
      scalar_t* dst = op + n * g.out_sn + i * g.out_sh;
      for (int64_t j = 0; j < g.out_w; ++j) {
        const ResolvedPoint<acc_t> r = resolve_sample(gxs[j], gys[j], g);
        const scalar_t* s = src;
        scalar_t* d = dst + j * g.out_sw;
        for (int64_t c = 0; c < g.C; ++c, s += g.in_sc, d += g.out_sc) {
          *d = static_cast<scalar_t>(
              r.weight[0] * static_cast<acc_t>(s[r.off[0]]) + r.weight[1] * static_cast<acc_t>(s[r.off[1]]) +
              r.weight[2] * static_cast<acc_t>(s[r.off[2]]) + r.weight[3] * static_cast<acc_t>(s[r.off[3]]));
        }
      }
    }
  });
}

// Backward over one task: sample n, channels [c0, c1), output rows [r0, r1). Adds this task's grad_H part to
// gh[9] and, when gi is non-null, scatters into gi (acc_t buffer with img's strides).
template <typename scalar_t>
void backward_task(const scalar_t* gop, const scalar_t* ip, const at::opmath_type<scalar_t>* h,
                   at::opmath_type<scalar_t>* gi, bool need_h, const Geometry& g, int64_t n, int64_t c0,
                   int64_t c1, int64_t r0, int64_t r1, double* gh) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* src = ip + n * g.in_sn;
  acc_t* gsrc = gi ? gi + n * g.in_sn : nullptr;
  const std::vector<acc_t> xs = base_coordinates<acc_t>(g.out_w, g.align_corners);
  std::vector<Projected<acc_t>> projected(static_cast<size_t>(g.out_w));
  for (int64_t i = r0; i < r1; ++i) {
    const acc_t y = grid::base_coordinate<acc_t>(i, g.out_h, g.align_corners);
    const scalar_t* grow = gop + n * g.out_sn + i * g.out_sh;
    double ax[3] = {0, 0, 0}, a1[3] = {0, 0, 0};  // this row's sums of a * x and of a
    // Projection first, in a loop of its own (see forward_kernel).
    for (int64_t j = 0; j < g.out_w; ++j) projected[j] = project(h, xs[j], y);
    for (int64_t j = 0; j < g.out_w; ++j) {
      const acc_t x = xs[j];
      ResolvedPoint<acc_t> r = resolve_sample(projected[j].gx, projected[j].gy, g);
      r.proj = projected[j];
      acc_t dpx = 0, dpy = 0;  // dL/d(pixel coordinate), summed over channels
      for (int64_t c = c0; c < c1; ++c) {
        const acc_t go = static_cast<acc_t>(grow[j * g.out_sw + c * g.out_sc]);
        if (need_h) {
          const scalar_t* s = src + c * g.in_sc;
          const acc_t v00 = r.mask[0] * static_cast<acc_t>(s[r.off[0]]);
          const acc_t v01 = r.mask[1] * static_cast<acc_t>(s[r.off[1]]);
          const acc_t v10 = r.mask[2] * static_cast<acc_t>(s[r.off[2]]);
          const acc_t v11 = r.mask[3] * static_cast<acc_t>(s[r.off[3]]);
          acc_t vx, vy;
          grid::interpolate_grad_xy(r.sp.taps, v00, v01, v10, v11, &vx, &vy);
          dpx += go * vx;
          dpy += go * vy;
        }
        if (gsrc) {
          acc_t* gs = gsrc + c * g.in_sc;
          // Taps outside the image have weight 0 and offset 0: adding 0 there is harmless.
          gs[r.off[0]] += go * r.weight[0];
          gs[r.off[1]] += go * r.weight[1];
          gs[r.off[2]] += go * r.weight[2];
          gs[r.off[3]] += go * r.weight[3];
        }
      }
      if (need_h) {
        acc_t a[3];
        grad_coefficients(r.proj, dpx * r.sp.dpx_dgx, dpy * r.sp.dpy_dgy, a);
        for (int k = 0; k < 3; ++k) {
          ax[k] += static_cast<double>(a[k]) * static_cast<double>(x);
          a1[k] += static_cast<double>(a[k]);
        }
      }
    }
    if (need_h) {
      for (int k = 0; k < 3; ++k) {
        gh[k * 3 + 0] += ax[k];
        gh[k * 3 + 1] += a1[k] * static_cast<double>(y);
        gh[k * 3 + 2] += a1[k];
      }
    }
  }
}

at::Tensor homography_warp_forward_cpu(const at::Tensor& img_in, const at::Tensor& H_in, int64_t out_h,
                                       int64_t out_w, c10::string_view padding_mode, bool align_corners) {
  ForwardArgs a = prepare_forward(img_in, H_in, out_h, out_w, padding_mode, c10::DeviceType::CPU);
  if (a.done) return a.out;
  const Geometry g = make_geometry(a.img, a.out, a.padding, align_corners);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_forward_cpu",
                                  [&] { forward_kernel<scalar_t>(a.img, a.H, a.out, g); });
  return a.out;
}

std::tuple<at::Tensor, at::Tensor> homography_warp_backward_cpu(const at::Tensor& grad_out_in,
                                                                const at::Tensor& img_in, const at::Tensor& H_in,
                                                                c10::string_view padding_mode, bool align_corners,
                                                                std::array<bool, 2> output_mask) {
  BackwardArgs a = prepare_backward(grad_out_in, img_in, H_in, padding_mode, output_mask, c10::DeviceType::CPU);
  const bool need_img = a.need_img, need_h = a.need_h;
  at::Tensor grad_H = need_h ? at::zeros({a.img.size(0), 3, 3}, a.H.options()) : at::empty({0}, a.H.options());
  if (a.empty) return {finish_grad_img(a), grad_H};
  const Geometry g = make_geometry(a.img, a.grad_out, a.padding, align_corners);

  // Split work into at least ~4 tasks per thread where the data allows it.
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t per_sample = std::max<int64_t>(1, (want + g.N - 1) / g.N);
  const int64_t c_groups = need_img ? std::min<int64_t>(g.C, per_sample) : 1;
  const int64_t r_groups = need_img ? 1 : std::min<int64_t>(g.out_h, per_sample);
  const int64_t tasks_per_sample = c_groups * r_groups;
  std::vector<double> partial(static_cast<size_t>(g.N * tasks_per_sample * 9), 0.0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.img.scalar_type(), "homography_warp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gop = a.grad_out.const_data_ptr<scalar_t>();
    const scalar_t* ip = a.img.const_data_ptr<scalar_t>();
    const acc_t* hp = a.H.const_data_ptr<acc_t>();
    acc_t* gip = need_img ? a.grad_img_acc.mutable_data_ptr<acc_t>() : nullptr;
    at::parallel_for(0, g.N * tasks_per_sample, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / tasks_per_sample, k = t % tasks_per_sample;
        const int64_t cg = k / r_groups, rg = k % r_groups;
        const int64_t c0 = g.C * cg / c_groups, c1 = g.C * (cg + 1) / c_groups;
        const int64_t r0 = g.out_h * rg / r_groups, r1 = g.out_h * (rg + 1) / r_groups;
        backward_task<scalar_t>(gop, ip, hp + n * 9, gip, need_h, g, n, c0, c1, r0, r1, &partial[t * 9]);
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
