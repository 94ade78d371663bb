"""rank_eval's fast-mode GEMM operands in one pass over the features (reidfast/ops/rank_eval.py: _bf16_operands is
the plain-torch twin, what the CPU and a machine without Triton use).

One program per operand row: it sums the row's squares in float32, then writes the row scaled and rounded to
bf16, then the three extra columns and the zero padding. The plain construction reads the features three times and
writes an fp32 temporary of their size (the squares), in about ten launches: at Market scale with 2048-d features
an H100 spent 0.28 ms of device time on it (bench/results/2026-11-27_NVIDIA-H100-80GB-HBM3.run3.json), against
about 0.07 ms for one read and the bf16 write.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _bf16(x):
    # float32 -> bf16 rounded to nearest, ties to even, as torch's casts and the GPU's conversion do; by integer
    # arithmetic on the bits because the interpreter's cast truncates (so its CPU runs would not check the rounding)
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _operand_rows_kernel(X, OUT, SUMSQ, M, D, K, stride_x, stride_out, alpha, NORMALIZE: tl.constexpr,
                         BIAS_COLUMNS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    live = row < M  # rows M.. of OUT are padding: zeros
    x_row = X + row.to(tl.int64) * stride_x
    out_row = OUT + row.to(tl.int64) * stride_out
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, D, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        v = tl.load(x_row + cols, mask=(cols < D) & live, other=0.0)
        acc += v * v
    sumsq = tl.sum(acc, axis=0)
    tl.store(SUMSQ + row, sumsq, mask=live)
    scale = alpha
    if NORMALIZE:  # cosine: rows divided by max(|x|, 1e-12), F.normalize's rule
        scale = alpha / tl.maximum(tl.sqrt(sumsq), 1e-12)
    for start in range(0, D, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        v = tl.load(x_row + cols, mask=(cols < D) & live, other=0.0)
        tl.store(out_row + cols, _bf16(v * scale), mask=cols < D)
    # columns D, D+1, D+2: the gallery term in three bf16 parts (each the rounding of what the parts before it
    # leave), or ones on the query side; then zeros up to K
    if BIAS_COLUMNS:
        bias = sumsq
        if NORMALIZE:
            bias = 1.0
        bias = tl.where(live, bias, 0.0)
        part1 = _bf16(bias)
        rest = bias - part1.to(tl.float32)
        part2 = _bf16(rest)
        part3 = _bf16(rest - part2.to(tl.float32))
    else:
        part1 = _bf16(tl.where(live, 1.0, 0.0))
        part2 = part1
        part3 = part1
    tl.store(out_row + D, part1)
    tl.store(out_row + D + 1, part2)
    tl.store(out_row + D + 2, part3)
    for start in range(D + 3, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        tl.store(out_row + cols, tl.zeros([BLOCK], dtype=tl.bfloat16), mask=cols < K)


def operand_rows(x: torch.Tensor, rows: int, width: int, alpha: float, normalize: bool, bias_columns: bool):
    """(out, sumsq): out (rows, width) bf16 with out[i, :D] = bf16(alpha * x[i] (/ max(|x[i]|, 1e-12) if
    normalize)), out[i, D:D+3] the three bf16 parts of |x[i]|^2 (1 if normalize) when bias_columns, else ones, zeros
    after that and in rows beyond x's; sumsq (M,) float32 the rows' sums of squares. x: (M, D) float32 with unit
    column stride, M <= rows, D + 3 <= width."""
    M, D = x.shape
    if x.dtype != torch.float32 or x.stride(1) != 1 or M > rows or D + 3 > width:
        raise ValueError(f"operand_rows: x must be float32 (M, D) with unit column stride, M <= {rows} and "
                         f"D + 3 <= {width}, got {x.dtype} {tuple(x.shape)} strides {x.stride()}")
    out = torch.empty((rows, width), dtype=torch.bfloat16, device=x.device)
    sumsq = torch.empty((M,), dtype=torch.float32, device=x.device)
    if rows:
        _operand_rows_kernel[(rows,)](x, out, sumsq, M, D, width, x.stride(0), out.stride(0), float(alpha),
                                      NORMALIZE=normalize, BIAS_COLUMNS=bias_columns, BLOCK=_BLOCK, num_warps=4)
    return out, sumsq
