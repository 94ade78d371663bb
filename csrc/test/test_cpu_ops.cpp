// Checks the CPU kernels of reidfast's ops and their autograd, called through the dispatcher as any C++ user would,
// against the same math composed from ATen ops. Exits non-zero on the first mismatch.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "reidfast/grid_math.h"
#include "reidfast/rank_math.h"
#include "reidfast/warp_scatter.h"

namespace {

int failures = 0;

void expect_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const bool ok = err <= tol;
  std::printf("%-55s max|err| = %.3g %s\n", what.c_str(), err, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

at::Tensor adain_aten(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& res,
                      bool lrelu, double slope, double eps) {
  const auto xd = x.to(at::kDouble);
  const auto mean = xd.mean({2, 3}, true);
  const auto var = xd.var({2, 3}, /*unbiased=*/false, /*keepdim=*/true);
  auto z = (xd - mean) / (var + eps).sqrt() * w.to(at::kDouble).unsqueeze(-1).unsqueeze(-1) +
           b.to(at::kDouble).unsqueeze(-1).unsqueeze(-1);
  if (lrelu) z = at::leaky_relu(z, slope);
  return z + res.to(at::kDouble);
}

void check_adain(bool channels_last) {
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("reidfast::adain_forward", "")
                     .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                         const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::string_view, double, double)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("reidfast::adain_backward", "")
                      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, c10::string_view, double)>();
  const std::string tag = channels_last ? " (channels_last)" : " (contiguous)";
  at::manual_seed(0);
  auto x = at::randn({3, 5, 7, 9}) * 2 + 0.5;
  auto res = at::randn({3, 5, 7, 9});
  if (channels_last) {
    x = x.contiguous(at::MemoryFormat::ChannelsLast);
    res = res.contiguous(at::MemoryFormat::ChannelsLast);
  }
  const auto w = at::randn({3, 5}) + 1, b = at::randn({3, 5});
  const double slope = 0.2, eps = 1e-5;
  auto [y, mean, rstd] = forward.call(x, w, b, res, "lrelu", slope, eps);
  expect_close("adain_forward vs ATen" + tag, y, adain_aten(x, w, b, res, true, slope, eps), 1e-5);
  expect_close("adain mean vs ATen" + tag, mean, x.mean({2, 3}), 1e-6);

  // Backward against autograd through the ATen composition.
  auto xd = x.to(at::kDouble).detach().requires_grad_(true);
  auto wd = w.to(at::kDouble).detach().requires_grad_(true);
  auto bd = b.to(at::kDouble).detach().requires_grad_(true);
  const auto gy = at::randn_like(x);
  auto yd = adain_aten(xd, wd, bd, res, true, slope, eps);
  auto grads = torch::autograd::grad({yd}, {xd, wd, bd}, {gy.to(at::kDouble)});
  auto [gx, gw, gb] = backward.call(gy, x, w, b, mean, rstd, "lrelu", slope);
  expect_close("adain_backward grad_x vs autograd" + tag, gx, grads[0], 1e-4);
  expect_close("adain_backward grad_weight vs autograd" + tag, gw, grads[1], 1e-4);
  expect_close("adain_backward grad_bias vs autograd" + tag, gb, grads[2], 1e-4);

  // The op's own autograd (csrc/autograd/adain.cpp), in double so the comparison is tight.
  auto x2 = xd.detach().requires_grad_(true);
  auto w2 = wd.detach().requires_grad_(true);
  auto b2 = bd.detach().requires_grad_(true);
  auto y2 = std::get<0>(forward.call(x2, w2, b2, res.to(at::kDouble), "lrelu", slope, eps));
  auto own = torch::autograd::grad({y2}, {x2, w2, b2}, {gy.to(at::kDouble)});
  expect_close("adain autograd grad_x" + tag, own[0], grads[0], 1e-10);
  expect_close("adain autograd grad_weight" + tag, own[1], grads[1], 1e-10);
  expect_close("adain autograd grad_bias" + tag, own[2], grads[2], 1e-10);
}

// rank_queries against a plain loop per query: stable sort of the row, junk removed, precision at each match.
void check_rank(bool market) {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("reidfast::rank_queries", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    c10::string_view)>();
  at::manual_seed(1);
  const int64_t num_q = 23, num_g = 301;
  // Few distinct distances: many ties, which the stable order must break by gallery index.
  const auto dist = at::randint(0, 7, {num_q, num_g}).to(at::kFloat);
  const auto q_pids = at::randint(1, 9, {num_q}).to(at::kInt), q_cams = at::randint(0, 3, {num_q}).to(at::kInt);
  const auto g_pids = at::randint(-1, 9, {num_g}).to(at::kInt), g_cams = at::randint(0, 3, {num_g}).to(at::kInt);
  auto [ap, inp, first_hit, num_matches] = op.call(dist, q_pids, q_cams, g_pids, g_cams,
                                                    market ? "market" : "torchreid");
  std::vector<double> want_ap(num_q, 0.0), want_inp(num_q, 0.0), want_first(num_q, -1.0), want_count(num_q, 0.0);
  const float* d = dist.const_data_ptr<float>();
  const int* qp = q_pids.const_data_ptr<int>();
  const int* qc = q_cams.const_data_ptr<int>();
  const int* gp = g_pids.const_data_ptr<int>();
  const int* gc = g_cams.const_data_ptr<int>();
  for (int64_t q = 0; q < num_q; ++q) {
    std::vector<int64_t> order(num_g);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[q * num_g + a] < d[q * num_g + b]; });
    int64_t rank = 0, k = 0;
    double ap_sum = 0.0;
    for (int64_t j : order) {
      const bool junk = (gp[j] == qp[q] && gc[j] == qc[q]) || (market && gp[j] == -1);
      if (junk) continue;
      if (gp[j] == qp[q]) {
        ++k;
        if (k == 1) want_first[q] = static_cast<double>(rank);
        const double at = double(k) / double(rank + 1);
        const double before = rank == 0 ? 1.0 : double(k - 1) / double(rank);
        ap_sum += market ? 0.5 * (before + at) : at;
        want_inp[q] = at;  // at the last match: INP
      }
      ++rank;
    }
    want_count[q] = static_cast<double>(k);
    want_ap[q] = k ? ap_sum / k : 0.0;
  }
  const std::string tag = market ? " (market)" : " (torchreid)";
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  expect_close("rank_queries ap vs loop" + tag, ap, at::tensor(want_ap, opts), 1e-12);
  expect_close("rank_queries inp vs loop" + tag, inp, at::tensor(want_inp, opts), 0);
  expect_close("rank_queries first_hit vs loop" + tag, first_hit, at::tensor(want_first, opts), 0);
  expect_close("rank_queries num_matches vs loop" + tag, num_matches, at::tensor(want_count, opts), 0);
}

// rank_summary on hand-made per-query outputs: valid queries, one without a match, a NaN row (num_matches -1), an
// unfinished row (first_hit -2) and a first hit beyond max_rank.
// The ranking kernels' bucket table (rank_math.h): the CUDA kernel fills it entry by entry with
// matches_in_buckets_below, the CPU kernel by counting; both must give, for every bucket, the number of matches
// in the buckets below it. Sorted match distances with ties, negatives, signed zeros and denormals.
template <typename T>
void check_bucket_table() {
  using reidfast::rank::MatchBuckets;
  const std::array<T, 9> values = {T(-2.5), T(-1e-40), T(-0.0), T(0.0), T(1e-40), T(0.125), T(0.75), T(1.0), T(3.0)};
  uint32_t state = 12345;
  auto next = [&state] { return state = state * 1664525u + 1013904223u; };
  int tables = 0, mismatches = 0;
  for (const int p : {2, 3, 17, 64, 65, 300, 1024}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<T> d(p);
      for (int k = 0; k < p; ++k) d[k] = trial % 2 ? values[next() % values.size()] : T(next() % 100000) * T(1e-3);
      std::sort(d.begin(), d.end());
      MatchBuckets<T> b;
      if (!reidfast::rank::make_match_buckets(d[0], 0, d[p - 1], p - 1, reidfast::rank::bucket_count_for(p), b))
        continue;  // no span (all equal): the kernels search instead
      std::vector<int> counted(b.count + 1, 0);
      for (int k = 0; k < p; ++k) ++counted[reidfast::rank::bucket_of(b, d[k]) + 1];
      for (int i = 0; i < b.count; ++i) counted[i + 1] += counted[i];
      for (int i = 0; i <= b.count; ++i)
        mismatches += reidfast::rank::matches_in_buckets_below(b, d.data(), p, i) != counted[i];
      ++tables;
    }
  }
  const bool ok = mismatches == 0 && tables > 100;
  std::printf("%-55s %d tables, %d mismatched entries %s\n",
              (std::string("rank bucket table, search vs count, ") + (sizeof(T) == 4 ? "float" : "double")).c_str(),
              tables, mismatches, ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

// The CUDA homography backward's reduce-scatter (warp_scatter.h), its five rounds run over 32 emulated lanes as
// reduce_scatter_rounds runs them on the device (round K items at partner distance M, then the kept items at M / 2):
// each of the K items' sums must land, in full, in lane_of_item(item), and the K owner lanes must be distinct.
template <int K, int M>
void scatter_rounds(std::vector<std::vector<double>>& v) {
  using namespace reidfast::warp;
  constexpr int h = kept_after(K);
  std::vector<std::vector<double>> sent(kLanes, std::vector<double>(h)), next = sent;
  for (int lane = 0; lane < kLanes; ++lane)
    for (int t = 0; t < h; ++t) sent[lane][t] = scatter_send<K>(v[lane].data(), t, (lane & M) != 0);
  for (int lane = 0; lane < kLanes; ++lane)
    for (int t = 0; t < h; ++t) next[lane][t] = scatter_keep<K>(v[lane].data(), t, (lane & M) != 0) + sent[lane ^ M][t];
  v = next;
  if constexpr (M > 1) scatter_rounds<h, M / 2>(v);
}

template <int K>
bool scatter_rounds_ok() {
  using namespace reidfast::warp;
  std::vector<std::vector<double>> v(kLanes, std::vector<double>(K));
  std::vector<double> want(K, 0.0);
  for (int lane = 0; lane < kLanes; ++lane)
    for (int k = 0; k < K; ++k) want[k] += v[lane][k] = double((lane * 131 + k * 29) % 97) + 0.25 * k;
  scatter_rounds<K, kLanes / 2>(v);
  std::vector<bool> owner(kLanes, false);
  bool ok = true;
  for (int k = 0; k < K; ++k) {
    const int lane = lane_of_item<K>(k);
    ok = ok && lane >= 0 && lane < kLanes && !owner[lane] && v[lane][0] == want[k];
    if (lane >= 0 && lane < kLanes) owner[lane] = true;
  }
  return ok;
}

void check_warp_scatter() {
  const bool ok = scatter_rounds_ok<9>();
  std::printf("%-55s %s\n", "warp reduce-scatter of 9 sums (32 emulated lanes)", ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

// grid_math.h's AxisMap formulas against the conventions' formulas as written there, bitwise: every index of every
// size up to max_size (the base coordinates' division is done by a reciprocal and a correction there), plus a few
// sizes up to 2^24 and a range of normalized coordinates.
template <typename T>
void check_axis_map(int64_t max_size) {
  using namespace reidfast::grid;
  int64_t mismatches = 0, checked = 0;
  auto check_base = [&](int64_t size, bool align, int64_t i) {
    const T want = size <= 1 ? T(0)
                   : align   ? T(2) * static_cast<T>(i) / static_cast<T>(size - 1) - T(1)
                             : (T(2) * static_cast<T>(i) + T(1)) / static_cast<T>(size) - T(1);
    mismatches += base_coordinate(i, axis_map<T>(size, align)) != want;
    ++checked;
  };
  for (int64_t size = 1; size <= max_size; ++size)
    for (bool align : {false, true})
      for (int64_t i = 0; i < size; ++i) check_base(size, align, i);
  uint64_t state = 88172645463325252ull;
  auto next = [&state] { return state ^= state << 13, state ^= state >> 7, state ^= state << 17; };
  for (int k = 0; k < 200000; ++k) {
    const int64_t size = 1 + static_cast<int64_t>(next() % (int64_t{1} << 24));
    check_base(size, k % 2 == 0, static_cast<int64_t>(next() % size));
  }
  for (int64_t size : {1, 2, 3, 7, 64, 127, 128, 255, 4097}) {
    for (bool align : {false, true}) {
      const AxisMap<T> a = axis_map<T>(size, align);
      for (T g : {T(-1.7), T(-1), T(-0.3333), T(0), T(1e-7), T(0.5), T(0.999), T(1), T(2.25), T(1e6), T(-1e6)}) {
        T scale;
        const T got = unnormalize(g, a, &scale);
        const T want_scale = align ? static_cast<T>(size - 1) / T(2) : static_cast<T>(size) / T(2);
        const T want = align ? (g + T(1)) * want_scale : ((g + T(1)) * static_cast<T>(size) - T(1)) / T(2);
        mismatches += got != want || scale != want_scale;
        ++checked;
      }
    }
  }
  const bool ok = mismatches == 0;
  const std::string what =
      std::string("grid AxisMap vs the written conventions, ") + (sizeof(T) == 4 ? "float" : "double");
  std::printf("%-55s %lld values, %lld mismatches %s\n", what.c_str(), static_cast<long long>(checked),
              static_cast<long long>(mismatches), ok ? "ok" : "FAIL");
  if (!ok) ++failures;
}

void check_rank_summary() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("reidfast::rank_summary", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  int64_t)>();
  const auto f64 = at::TensorOptions().dtype(at::kDouble), i64 = at::TensorOptions().dtype(at::kLong);
  const auto ap = at::tensor(std::vector<double>{0.5, 0.0, 0.25, 1.0, 0.0, 0.0}, f64);
  const auto inp = at::tensor(std::vector<double>{0.2, 0.0, 0.1, 1.0, 0.0, 0.0}, f64);
  const auto first = at::tensor(std::vector<int64_t>{2, -1, 7, 0, -1, -2}, i64);
  const auto count = at::tensor(std::vector<int64_t>{3, 0, 2, 1, -1, 5}, i64);
  // CMC counts at ranks 0..4 (hits at 0 and 2; rank 7 is beyond), then valid, AP sum, INP sum, NaN, unfinished.
  const auto want = at::tensor(std::vector<double>{1, 1, 2, 2, 2, 4, 1.75, 1.3, 1, 1}, f64);
  expect_close("rank_summary vs hand count", op.call(ap, inp, first, count, 5), want, 1e-15);
}

// The grid homography_warp samples at, built from ATen ops: H applied to affine_grid's base coordinates, with the
// horizon rule of homography_math.h.
at::Tensor homography_grid_aten(const at::Tensor& H, int64_t out_h, int64_t out_w, bool align_corners) {
  const int64_t N = H.size(0);
  const auto theta = at::eye(3, H.options()).slice(0, 0, 2).unsqueeze(0).expand({N, 2, 3});
  const auto base = at::affine_grid_generator(theta, {N, 1, out_h, out_w}, align_corners);  // (N, h, w, 2)
  const auto points = at::cat({base, at::ones_like(base.slice(-1, 0, 1))}, -1);          // (x, y, 1)
  const auto uvw = at::einsum("nij,nhwj->nhwi", {H, points});
  const auto w = uvw.slice(-1, 2, 3);
  const double eps = 1e-6;
  const auto w_safe = at::where(w.abs() < eps, at::where(w < 0, -eps, eps).to(w.scalar_type()), w);
  return (uvw.slice(-1, 0, 2) / w_safe).clamp(-1e6, 1e6);
}

void check_homography(bool channels_last, int64_t padding, bool align_corners) {
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("reidfast::homography_warp_forward", "")
                     .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, c10::string_view,
                                       bool)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("reidfast::homography_warp_backward", "")
                      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, c10::string_view, bool,
                                                                std::array<bool, 2>)>();
  const char* names[] = {"zeros", "border", "reflection"};
  const std::string tag = std::string(" (") + names[padding] + (align_corners ? ", align" : "") +
                          (channels_last ? ", channels_last)" : ")");
  at::manual_seed(0);
  auto img = at::randn({2, 3, 9, 7}, at::kDouble);
  if (channels_last) img = img.contiguous(at::MemoryFormat::ChannelsLast);
  auto H = at::eye(3, at::kDouble).unsqueeze(0).repeat({2, 1, 1}) + 0.2 * at::randn({2, 3, 3}, at::kDouble);
  const int64_t out_h = 6, out_w = 11;
  const auto y = forward.call(img, H, out_h, out_w, names[padding], align_corners);
  auto imgd = img.detach().requires_grad_(true);
  auto Hd = H.detach().requires_grad_(true);
  const auto want = at::grid_sampler(imgd, homography_grid_aten(Hd, out_h, out_w, align_corners), /*bilinear*/ 0,
                                     padding, align_corners);
  expect_close("homography_warp_forward vs grid_sampler" + tag, y, want, 1e-12);
  const auto gy = at::randn_like(want);
  auto grads = torch::autograd::grad({want}, {imgd, Hd}, {gy});
  auto [gi, gh] = backward.call(gy, img, H, names[padding], align_corners, {true, true});
  expect_close("homography_warp_backward grad_img vs autograd" + tag, gi, grads[0], 1e-11);
  expect_close("homography_warp_backward grad_H vs autograd" + tag, gh, grads[1], 1e-9);

  // The op's own autograd (csrc/autograd/homography.cpp): a C++ user differentiates through the forward.
  auto img2 = img.detach().requires_grad_(true);
  auto H2 = H.detach().requires_grad_(true);
  auto own = torch::autograd::grad({forward.call(img2, H2, out_h, out_w, names[padding], align_corners)},
                                   {img2, H2}, {gy});
  expect_close("homography_warp autograd grad_img" + tag, own[0], grads[0], 1e-11);
  expect_close("homography_warp autograd grad_H" + tag, own[1], grads[1], 1e-9);
}

}  // namespace

int main() {
  check_adain(false);
  check_adain(true);
  check_rank(false);
  check_rank(true);
  check_rank_summary();
  check_bucket_table<float>();
  check_bucket_table<double>();
  check_warp_scatter();
  check_axis_map<float>(8192);
  check_axis_map<double>(2048);
  for (int64_t padding = 0; padding < 3; ++padding)
    for (bool align : {false, true}) check_homography(padding == 1, padding, align);
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all CPU op checks passed\n");
  return 0;
}
