"""k-reciprocal re-ranking ('Re-ranking Person Re-identification with k-reciprocal Encoding', CVPR 2017), in
torch: on the GPU when the features are there.

From the paper's equations, over all N = Q + G images with d the squared euclidean distance (the paper's; the
cosine distance on request), each column divided by its maximum (the normalization of the authors' evaluation):
  N(p, k)   the k nearest neighbours of p (p itself included)
  R(p, k)   = {g in N(p, k) : p in N(g, k)}                                   k-reciprocal neighbours (eq. 4)
  R*(p, k)  = R(p, k) united with R(q, k/2) for each q in R(p, k) whose
              |R(p, k) and R(q, k/2)| >= 2/3 |R(q, k/2)|                       expansion (eq. 6)
  V[p, g]   = exp(-d(p, g)) for g in R*(p, k1), else 0, rows scaled to sum 1   (eq. 7)
  V[p]     <- mean of V[q] over q in N(p, k2)                                  local query expansion (eq. 10)
  d_J(p, g) = 1 - sum_j min(V[p, j], V[g, j]) / sum_j max(V[p, j], V[g, j])    Jaccard distance (eq. 11)
  d*(p, g)  = (1 - lambda) d_J(p, g) + lambda d(p, g)                           final distance (eq. 12)
Memory: the N x N distance and V matrices are held (Market-1501: 19,281^2 floats, 1.5 GB each), so this is for
galleries of that order; the min-sums use each query's nonzero columns only.
"""
from __future__ import annotations

import torch

from ..ops.rank_eval import feature_pair
from ..ops.reference import check_features_finite, pairwise_distance


def label(metric: str) -> str:
    """What re-ranked distances are, for reports (rank_eval's distmat_label)."""
    return f"{metric}, k-reciprocal re-ranked"


def _reciprocal(knn: torch.Tensor) -> torch.Tensor:
    """(N, k) neighbour lists -> (N, k) bool: is knn[p, i] a k-reciprocal neighbour of p (p in N(knn[p, i], k))."""
    return (knn[knn] == torch.arange(knn.shape[0], device=knn.device)[:, None, None]).any(2)


def k_reciprocal_distance(query_features: torch.Tensor, gallery_features: torch.Tensor, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, query_chunk: int = 16,
                          metric: str = "euclidean") -> torch.Tensor:
    """(Q, G) re-ranked distances (see the module docstring). Features (Q, D), (G, D) on one device; `metric` is
    the original distance d (euclidean: squared L2, or cosine, as rank_eval defines them)."""
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"rerank: need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1; got {k1}, {k2}, {lambda_value}")
    query_features, gallery_features = feature_pair(query_features, gallery_features, who="rerank")
    check_features_finite(query_features, gallery_features, who="rerank")
    num_q = query_features.shape[0]
    feats = torch.cat([query_features, gallery_features]).detach().float()
    n = feats.shape[0]
    dist = pairwise_distance(feats, feats, metric).clamp_(min=0)
    if not dist.isfinite().all():  # finite features whose squared norms overflow float32
        raise ValueError(f"rerank: the features' {metric} distances overflow float32: scale the features down")
    dist /= dist.max(0, keepdim=True).values.clamp(min=1e-12)  # column-normalized, as the authors' code
    k1 = min(k1, n - 1)
    half = max(1, int(round(k1 / 2)))
    k2 = min(k2, n)
    # Nearest first; row p starts with p itself, as the equations have it (d(p, p) = 0), even where rounding or a
    # tie says otherwise: a zero feature's cosine distance to itself is 1, and its row of V was then empty (0 / 0).
    dist.fill_diagonal_(-1)
    order = torch.topk(dist, max(k1 + 1, k2), dim=1, largest=False, sorted=True).indices
    dist.fill_diagonal_(0)
    knn = order[:, : k1 + 1]
    knn_half = order[:, : half + 1]
    knn_qe = order[:, :k2]
    recip = _reciprocal(knn)  # (N, k1+1)
    recip_half = _reciprocal(knn_half)  # (N, half+1)

    # Expansion: candidate q = knn[p, i] in R(p, k1) adds R(q, k1/2) when most of it lies in R(p, k1).
    members = torch.zeros(n, n, dtype=torch.bool, device=feats.device)
    members.scatter_(1, knn, recip)  # members[p, g]: g in R(p, k1)
    cand_sets = knn_half[knn]  # (N, k1+1, half+1): N(q, k1/2) for each candidate q
    cand_valid = recip_half[knn]  # ... restricted to R(q, k1/2)
    in_r = torch.gather(members, 1, cand_sets.reshape(n, -1)).reshape(cand_sets.shape) & cand_valid
    size_half = cand_valid.sum(2)
    accept = recip & (in_r.sum(2) * 3 >= 2 * size_half)  # |R(p,k) and R(q,k/2)| >= 2/3 |R(q,k/2)|
    expanded = members.clone()
    rows = torch.arange(n, device=feats.device)[:, None, None].expand_as(cand_sets)
    take = accept[:, :, None] & cand_valid
    expanded[rows[take], cand_sets[take]] = True

    weights = torch.where(expanded, torch.exp(-dist), torch.zeros_like(dist))
    weights /= weights.sum(1, keepdim=True)
    if k2 > 1:  # local query expansion: average over the k2 nearest neighbours
        weights = torch.cat([weights[knn_qe[s:s + query_chunk]].mean(1) for s in range(0, n, query_chunk)])

    gallery_v = weights[num_q:]  # (G, N)
    total = weights.sum(1)
    jaccard = torch.empty(num_q, gallery_v.shape[0], device=feats.device, dtype=weights.dtype)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        v = weights[start:stop]  # (c, N)
        nonzero = v > 0
        width = int(nonzero.sum(1).max())
        cols = torch.topk(nonzero.to(torch.int8), width, dim=1).indices  # each row's nonzero columns (+ zeros)
        vals = torch.gather(v, 1, cols)  # (c, K), zero where padded
        mins = torch.minimum(gallery_v[:, cols], vals[None]).sum(2).t()  # (c, G) = sum_j min(V[p,j], V[g,j])
        maxs = total[start:stop, None] + total[None, num_q:] - mins  # sum max = sum V[p] + sum V[g] - sum min
        jaccard[start:stop] = 1 - mins / maxs
    return (1 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:]
