// Every reidfast op schema, in one place. Kernels register per dispatch key in cpu/ and cuda/, autograd in
// autograd/; fake (meta) kernels are registered from Python (reidfast/ops/_registration.py).
#include <torch/library.h>

TORCH_LIBRARY(reidfast, m) {
  // AdaIN (+ activation, + residual). Returns y and the row statistics (mean, rstd), shape (N, C), in the
  // op-math dtype (float32, or float64 for float64 x) that the backward reuses.
  m.def(
      "adain_forward(Tensor x, Tensor weight, Tensor bias, Tensor? residual, str activation, "
      "float negative_slope, float eps) -> (Tensor, Tensor, Tensor)");
  // Fused backward: grad_x, grad_weight, grad_bias (grad_residual is grad_y itself).
  m.def(
      "adain_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor rstd, "
      "str activation, float negative_slope) -> (Tensor, Tensor, Tensor)");
  // Ranking of each query's gallery row under the Market-1501 protocol (reidfast/ops/reference.py rank_eval):
  // dist (Q, G) float32/float64, int32 labels. Per query: AP and INP (float64, 0 when no match), the 0-based rank
  // of the first true match (-1 when none) and the number of true matches (-1: the row has a NaN). CUDA marks rows
  // with more matches than it holds in shared memory with first_hit = -2; the caller redoes them.
  m.def(
      "rank_queries(Tensor dist, Tensor q_pids, Tensor q_camids, Tensor g_pids, Tensor g_camids, str ap_mode) "
      "-> (Tensor ap, Tensor inp, Tensor first_hit, Tensor num_matches)");
  // What the evaluation's summary needs from rank_queries' outputs, in one float64 vector of max_rank + 5 entries
  // (rank_math.h SummaryTail): valid queries with their first hit at rank <= r for each r < max_rank, then valid
  // queries, sum of AP, sum of INP, NaN rows, unfinished rows. One launch and one transfer for the whole summary.
  m.def("rank_summary(Tensor ap, Tensor inp, Tensor first_hit, Tensor num_matches, int max_rank) -> Tensor");
  // Homography warp: bilinear grid_sample of img at the points H maps the output's normalized coordinates to
  // (homography_math.h). H is (N, 3, 3) in the coordinate dtype (float32, or float64 for a float64 img).
  m.def(
      "homography_warp_forward(Tensor img, Tensor H, int out_h, int out_w, str padding_mode, bool align_corners) "
      "-> Tensor");
  // Fused backward: (grad_img, grad_H). output_mask says which are needed; one not needed comes back with shape (0,).
  m.def(
      "homography_warp_backward(Tensor grad_out, Tensor img, Tensor H, str padding_mode, bool align_corners, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
}
