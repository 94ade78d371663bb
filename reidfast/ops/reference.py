"""Pure-PyTorch reference of every reidfast op: the test oracle and the benchmark baseline.

Written for clarity, not speed. Each function here defines its op's semantics; the fused kernels must agree with
it in values and in gradients (through autograd on these functions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and accumulation use: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def activate(z: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    if activation == "none":
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "lrelu":
        return F.leaky_relu(z, negative_slope)
    raise ValueError(f"activation must be one of 'none', 'relu', 'lrelu'; got {activation!r}")


def adain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str = "none",
    negative_slope: float = 0.2,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Adaptive instance norm, then the activation, then the skip connection.

    y = act((x - mean_nc) / sqrt(var_nc + eps) * weight[n, c] + bias[n, c]) + residual
    with mean and biased variance over H*W per (n, c), computed in float32 (float64 for float64 x).
    This is MUNIT/DG-Net's AdaptiveInstanceNorm2d with the ResBlock's activation and skip folded in.
    """
    acc = opmath_dtype(x.dtype)
    xf = x.to(acc)
    mean = xf.mean(dim=(2, 3), keepdim=True)
    var = (xf - mean).square().mean(dim=(2, 3), keepdim=True)  # biased variance
    z = (xf - mean) / torch.sqrt(var + eps) * weight.to(acc)[:, :, None, None] + bias.to(acc)[:, :, None, None]
    y = activate(z, activation, negative_slope)
    if residual is not None:
        y = y + residual.to(acc)
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# conv2d: the convolution of discriminators whose input gradient is penalized.

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """`reidfast.ops.conv2d`'s reference: F.conv2d, with autograd's own derivatives of every order."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


# ---------------------------------------------------------------------------------------------------------------
# reflection_pad2d: the reflect padding of the GANs' convolutions.

def reflection_pad2d(x, padding) -> torch.Tensor:
    """`reidfast.ops.reflection_pad2d`'s reference: F.pad in reflect mode, with autograd's own derivatives."""
    return F.pad(x, padding, mode="reflect")


# ---------------------------------------------------------------------------------------------------------------
# rank_eval: re-id ranking under the Market-1501 protocol.

def pairwise_distance(query_features: torch.Tensor, gallery_features: torch.Tensor, metric: str) -> torch.Tensor:
    """(Q, G) distances between rows of query_features (Q, D) and gallery_features (G, D).

    euclidean: squared L2 computed as torchreid does, |q|^2 + |g|^2 - 2 q.g (one GEMM; can round slightly below 0).
    cosine: 1 - q.g / (|q| |g|), with rows normalized first (F.normalize, eps 1e-12).
    """
    q, g = query_features, gallery_features
    if metric == "euclidean":
        qq = (q * q).sum(1, keepdim=True)
        gg = (g * g).sum(1)
        return torch.addmm(qq + gg, q, g.t(), beta=1, alpha=-2)
    if metric == "cosine":
        return 1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).t()
    raise ValueError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}")


def junk_mask(q_pids, q_camids, g_pids, g_camids, ap_mode: str):
    """Which gallery items are junk for the query (the rule in rank_eval's docstring), broadcasting query against
    gallery labels (tensors or numpy arrays): the query's id and camera, and under ap_mode="market" label -1."""
    junk = (g_pids == q_pids) & (g_camids == q_camids)
    return junk | (g_pids == -1) if ap_mode == "market" else junk


def check_features_finite(query_features: torch.Tensor, gallery_features: torch.Tensor, who: str = "rank_eval"
                          ) -> None:
    """Features must be finite: an infinite value makes its rows' distances infinite or NaN, ranked silently.
    `who` begins the message (the function the user called)."""
    for name, features in (("query_features", query_features), ("gallery_features", gallery_features)):
        bad_rows = (~features.isfinite()).any(1).nonzero()
        if bad_rows.numel():
            raise ValueError(f"{who}: {name} must be finite, but row {int(bad_rows[0])} holds a non-finite value")


def rank_eval(
    q_pids: torch.Tensor,
    g_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_camids: torch.Tensor,
    distmat: torch.Tensor | None = None,
    query_features: torch.Tensor | None = None,
    gallery_features: torch.Tensor | None = None,
    metric: str = "euclidean",
    max_rank: int = 50,
    ap_mode: str = "torchreid",
):
    """CMC and mAP of re-id retrieval by sorting each query's row. Defines the protocol of `ops.rank_eval`:

    Ranking. Each query ranks the gallery by distance, nearest first. Ties between equal distances are broken by
      gallery index (a stable sort), so the result never depends on the sort algorithm.
    Junk. Gallery items with the query's id AND the query's camera are removed before ranking (the same person seen
      by the same camera is too easy). With ap_mode="market", gallery items labelled -1 are junk too, as in the
      official Market-1501 code; with "torchreid" they are ordinary non-matches (distractors labelled 0 always are).
    Ranks. After junk removal, rank_k (0-based) is the position of the k-th true match (k = 1..P), i.e. the number
      of remaining items ordered before it. True matches: remaining items with the query's id.
    Invalid queries. A query with no true match is invalid: skipped by CMC, mAP and mINP, and not counted in
      num_valid.
    CMC. cmc[r] = fraction of valid queries with rank_1 <= r, for r < max_rank; max_rank is clipped to the gallery
      size (as torchreid does).
    AP, ap_mode="torchreid" (torchreid, fast-reid): the mean over matches of the precision at each one,
        AP = (1/P) sum_k k / (rank_k + 1).
    AP, ap_mode="market" (the official Market-1501 evaluation, and DG-Net's, which copies it): the trapezoid rule,
        AP = (1/P) sum_k (p_before_k + p_at_k) / 2,  p_at_k = k / (rank_k + 1),
        p_before_k = (k - 1) / rank_k, or 1 when rank_k = 0.
      Both are means over the valid queries; the official script divides by all queries instead, which differs
      only when some query has no match (never on Market-1501 itself).
    mINP (the re-id survey 'Deep Learning for Person Re-identification', TPAMI 2021): INP = P / (rank_P + 1), the
    precision at the last true match.
    Distances: a distance matrix (Q, G), or features with `pairwise_distance`. NaN distances and non-finite
    features are an error.
    """
    from .rank_result import summarize  # the shared summary; imported here to keep this module's imports light

    num_q = q_pids.numel()
    num_g = g_pids.numel()
    if distmat is None:
        check_features_finite(query_features, gallery_features)
    # Chunks of queries bound the (chunk, G) index tensors the sort makes (the oracle must also run at MSMT17 scale).
    chunk = max(1, (1 << 22) // max(num_g, 1))
    outputs = []
    for start in range(0, num_q, chunk):
        rows = slice(start, min(start + chunk, num_q))
        if distmat is not None:
            dist = distmat[rows]
        else:
            dist = pairwise_distance(query_features[rows], gallery_features, metric)
        if torch.isnan(dist).any():
            bad = start + int(torch.isnan(dist).any(1).nonzero()[0])
            raise ValueError(f"rank_eval: the distance row of query {bad} contains NaN")
        order = torch.sort(dist, dim=1, stable=True).indices  # nearest first, ties by gallery index
        same_pid = g_pids[order] == q_pids[rows, None]
        junk = junk_mask(q_pids[rows, None], q_camids[rows, None], g_pids[order], g_camids[order], ap_mode)
        match = same_pid & ~junk
        rank = (~junk).cumsum(1) - 1  # 0-based position among the kept items
        k = match.cumsum(1)  # 1-based index of the match at each match position
        rank_f, k_f = rank.double(), k.double()
        p_at = k_f / (rank_f + 1)
        if ap_mode == "market":
            p_before = torch.where(rank == 0, torch.ones_like(rank_f), (k_f - 1) / rank_f.clamp(min=1))
            terms = (p_before + p_at) / 2
        else:
            terms = p_at
        num_matches = match.sum(1)
        denom = num_matches.clamp(min=1).double()
        ap = torch.where(match, terms, torch.zeros_like(terms)).sum(1) / denom
        none = torch.full_like(rank, -1)
        first_hit = torch.where(match, rank, torch.full_like(rank, num_g)).min(1).values
        first_hit = torch.where(num_matches > 0, first_hit, none[:, 0])
        last_hit = torch.where(match, rank, none).max(1).values
        inp = torch.where(num_matches > 0, num_matches.double() / (last_hit + 1).double(), torch.zeros_like(ap))
        outputs.append((ap, inp, first_hit, num_matches))
    ap, inp, first_hit, num_matches = (torch.cat(t) for t in zip(*outputs))
    return summarize(ap, inp, first_hit, num_matches, min(max_rank, num_g), ap_mode, metric, gallery_size=num_g)
# ---- homography warp ---------------------------------------------------------------------------------------
# The rule for points at or near the horizon (denominator w of the projective division near 0), shared with the
# kernels (csrc/include/reidfast/homography_math.h, triton/homography.py): |w| is raised to at least
# HOMOGRAPHY_MIN_DENOMINATOR keeping its sign (w == 0 counts as positive), and the resulting normalized
# coordinates are clamped to +-HOMOGRAPHY_MAX_COORD. Such points sample the padding; nothing becomes Inf or NaN.
# A point whose coordinate is NaN nonetheless (H holds a NaN, or an infinity that meets a 0) samples nothing: its
# output is NaN in every channel, it sends no gradient to the image, and its sample's gradient in H is NaN (the
# kernels make all 9 entries NaN; autograd here, those the NaN reaches). grid_sample itself gives such points
# values that depend on the padding mode, and its CPU backward crashed on them under "border" (torch 2.14).
HOMOGRAPHY_MIN_DENOMINATOR = 1e-6
HOMOGRAPHY_MAX_COORD = 1e6
PADDING_MODES = ("zeros", "border", "reflection")


def base_coordinates(size: int, align_corners: bool, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Normalized coordinates of the pixel centres of an axis of `size` pixels: affine_grid's base grid.

    align_corners=True: -1 and 1 are the first and last centres; False: they are the outer edges; one pixel: 0.
    """
    if size == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    i = torch.arange(size, dtype=dtype, device=device)
    if align_corners:
        return 2 * i / (size - 1) - 1
    return (2 * i + 1) / size - 1


def homography_grid(H: torch.Tensor, out_size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """The (N, Hout, Wout, 2) grid_sample grid of homography_warp: H applied to affine_grid's base coordinates.

    Computed in H's dtype. The base coordinates are those of an identity `affine_grid` (same align_corners).
    """
    out_h, out_w = out_size
    ys = base_coordinates(out_h, align_corners, H.dtype, H.device)
    xs = base_coordinates(out_w, align_corners, H.dtype, H.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)  # (Hout, Wout, 3): (x, y, 1)
    uvw = torch.einsum("nij,hwj->nhwi", H, points)
    w = uvw[..., 2:]
    eps = HOMOGRAPHY_MIN_DENOMINATOR
    # The floor in w's dtype: torch.where of two Python floats would make it float32 (1e-6 rounded), which moved
    # float64 coordinates near the horizon by 2.5e-9 of their size away from the kernels' (double 1e-6).
    floor = w.new_tensor(eps)  # 0-d: broadcast by torch.where, nothing of w's size made for it
    w_safe = torch.where(w.abs() < eps, torch.where(w < 0, -floor, floor), w)
    return (uvw[..., :2] / w_safe).clamp(-HOMOGRAPHY_MAX_COORD, HOMOGRAPHY_MAX_COORD)


def homography_warp(
    img: torch.Tensor,
    H: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    padding_mode: str = "zeros",
    align_corners: bool = False,
    nan_rule: bool = True,
) -> torch.Tensor:
    """Bilinear sampling of img at the points H maps the output's normalized coordinates to.

    H (N, 3, 3) maps an output point (x, y, 1), x and y in [-1, 1] as in affine_grid/grid_sample under
    align_corners, to input normalized coordinates after the projective division (with the horizon rule above).
    Coordinates and interpolation are computed in float32 (float64 for a float64 img); the result has img's dtype.
    nan_rule=False leaves NaN coordinates to grid_sample (see the NaN rule above): the plain unfused path, which the
    benchmarks time (the rule's extra passes cost it about a quarter of its time on the CPU, eager or compiled).
    """
    acc = opmath_dtype(img.dtype)
    size = tuple(img.shape[-2:]) if out_size is None else tuple(out_size)
    grid = homography_grid(H.to(acc), size, align_corners)
    if nan_rule:
        nan_point = (grid[..., 0] + grid[..., 1]).isnan()  # (N, Hout, Wout)
        grid = torch.where(nan_point[..., None], 0.0, grid)
    out = F.grid_sample(img.to(acc), grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    if nan_rule:
        out = torch.where(nan_point[:, None], float("nan"), out)
    return out.to(img.dtype)
