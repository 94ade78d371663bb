"""Homography warp in Triton: one program per (block of output points, sample); each point's coordinates and taps
are computed once and reused for every channel. The math is that of csrc/include/reidfast/grid_math.h and
homography_math.h (bilinear grid_sample semantics, the horizon rule), spelled out for Triton.

Backward: grad_img by atomic adds (into a float32 buffer for half/bfloat16 images), so it is nondeterministic on
the GPU; grad_H as per-program partial sums of the 9 entries, added in a fixed order afterwards (deterministic).
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl

from .._registration import register_homography_op_pair
from ..homography import check_has_pixels
from ..reference import opmath_dtype

_PADDING = {"zeros": 0, "border": 1, "reflection": 2}
_BLOCK = 256


@triton.jit
def _base_coordinate(idx, size, ALIGN: tl.constexpr, ACC: tl.constexpr):
    i = idx.to(ACC)
    if ALIGN:
        g = 2.0 * i / tl.maximum(size - 1, 1) - 1.0
    else:
        g = (2.0 * i + 1.0) / size - 1.0
    return tl.where(size <= 1, 0.0, g).to(ACC)


@triton.jit
def _clip(p, size):
    # size: the axis length as a tensor of p's dtype (see _pixel)
    hi = size - 1.0
    grad = tl.where((p <= 0.0) | (p >= hi), 0.0, 1.0).to(p.dtype)
    return tl.minimum(tl.maximum(p, 0.0), hi), grad


@triton.jit
def _reflect(p, low, span):
    # Reflects p into [low, low + span] (grid_math.h: reflect); span == 0 (a single pixel, align_corners) gives 0.
    q = p - low
    sign = tl.where(q < 0.0, -1.0, 1.0).to(p.dtype)
    q = tl.abs(q)
    safe_span = tl.where(span > 0.0, span, 1.0)
    extra = q % safe_span  # C fmod on floats
    flips = tl.floor(q / safe_span)
    even = (flips - 2.0 * tl.floor(flips / 2.0)) == 0.0
    out = tl.where(even, extra + low, span - extra + low)
    grad = tl.where(even, sign, -sign)
    out = tl.where(span > 0.0, out, 0.0)
    grad = tl.where(span > 0.0, grad, 0.0)
    return out, grad


@triton.jit
def _pixel(g, size_int, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """Normalized -> padded pixel coordinate and its derivative (grid_math.h: unnormalize + apply_padding)."""
    size = tl.zeros_like(g) + size_int  # as a tensor of g's dtype, whether size_int is an int or a tensor
    if ALIGN:
        scale = (size - 1.0) / 2.0
        p = (g + 1.0) * scale
    else:
        scale = size / 2.0
        p = ((g + 1.0) * size - 1.0) / 2.0
    if PADDING == 1:
        p, grad = _clip(p, size)
    elif PADDING == 2:
        if ALIGN:
            p, g_ref = _reflect(p, tl.zeros_like(g), size - 1.0)
        else:
            p, g_ref = _reflect(p, tl.zeros_like(g) - 0.5, size)
        p, g_clip = _clip(p, size)
        grad = g_ref * g_clip
    else:
        grad = tl.full(p.shape, 1.0, p.dtype)
        p = tl.minimum(tl.maximum(p, -2.0), size + 1.0)
    nan = p != p
    p = tl.where(nan, -2.0, p)
    grad = tl.where(nan, 0.0, grad)
    return p, grad * scale


@triton.jit
def _point(Hn, offs, OUT_H, OUT_W, IN_H, IN_W, PADDING: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr):
    """Everything about the output points offs of one sample: base coordinates, projection, taps."""
    i = offs // OUT_W
    j = offs % OUT_W
    x = _base_coordinate(j, OUT_W, ALIGN, ACC)
    y = _base_coordinate(i, OUT_H, ALIGN, ACC)
    h0 = tl.load(Hn + 0)
    h1 = tl.load(Hn + 1)
    h2 = tl.load(Hn + 2)
    h3 = tl.load(Hn + 3)
    h4 = tl.load(Hn + 4)
    h5 = tl.load(Hn + 5)
    h6 = tl.load(Hn + 6)
    h7 = tl.load(Hn + 7)
    h8 = tl.load(Hn + 8)
    u = h0 * x + h1 * y + h2
    v = h3 * x + h4 * y + h5
    w = h6 * x + h7 * y + h8
    # Horizon rule (homography_math.h): |w| raised to >= 1e-6 keeping its sign, coordinates clamped to +-1e6.
    eps = tl.full(w.shape, 1.0, ACC) / 1000000.0
    lim = tl.full(w.shape, 1000000.0, ACC)
    w_live = ~((w < eps) & (w > -eps))  # as homography_math.h: a NaN w stays (and makes the point NaN)
    w = tl.where(w_live, w, tl.where(w < 0.0, -eps, eps))
    inv_w = 1.0 / w
    gx = u * inv_w
    gy = v * inv_w
    gx_live = (gx >= -lim) & (gx <= lim)
    gy_live = (gy >= -lim) & (gy <= lim)
    # NaN coordinates (homography_math.h, coordinate_is_nan): taps at coordinate 0, switched off by the kernels.
    # Found before the clamp, whose minimum/maximum return the other operand for a NaN.
    nan_pt = (gx != gx) | (gy != gy)
    gx = tl.minimum(tl.maximum(gx, -lim), lim)
    gy = tl.minimum(tl.maximum(gy, -lim), lim)
    px, dpx = _pixel(tl.where(nan_pt, 0.0, gx), IN_W, PADDING, ALIGN)
    py, dpy = _pixel(tl.where(nan_pt, 0.0, gy), IN_H, PADDING, ALIGN)
    fx = tl.floor(px)
    fy = tl.floor(py)
    x0 = fx.to(tl.int32)
    y0 = fy.to(tl.int32)
    tx = px - fx
    ty = py - fy
    return x, y, gx, gy, inv_w, w_live, gx_live, gy_live, dpx, dpy, x0, y0, tx, ty, nan_pt


@triton.jit
def _taps(x0, y0, tx, ty, mask, IN_H, IN_W, s_in_h, s_in_w):
    """The four bilinear taps of each point: in-image masks, offsets in a channel, weights (00, 01, 10, 11)."""
    x1 = x0 + 1
    y1 = y0 + 1
    in_x0 = (x0 >= 0) & (x0 < IN_W)
    in_x1 = (x1 >= 0) & (x1 < IN_W)
    in_y0 = (y0 >= 0) & (y0 < IN_H)
    in_y1 = (y1 >= 0) & (y1 < IN_H)
    o00 = y0.to(tl.int64) * s_in_h + x0.to(tl.int64) * s_in_w
    o10 = o00 + s_in_h
    return (mask & in_x0 & in_y0, mask & in_x1 & in_y0, mask & in_x0 & in_y1, mask & in_x1 & in_y1,
            o00, o00 + s_in_w, o10, o10 + s_in_w,
            (1.0 - tx) * (1.0 - ty), tx * (1.0 - ty), (1.0 - tx) * ty, tx * ty)


# Sizes are not specialized: Triton would turn a size of 1 into a compile-time constant.
@triton.jit(do_not_specialize=["C", "IN_H", "IN_W", "OUT_H", "OUT_W"])
def _hw_fwd_kernel(IMG, H, OUT, C, IN_H, IN_W, OUT_H, OUT_W, s_in_n, s_in_c, s_in_h, s_in_w, s_out_n, s_out_c,
                   s_out_h, s_out_w, PADDING: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < OUT_H * OUT_W
    _x, _y, _gx, _gy, _iw, _wl, _gxl, _gyl, _dpx, _dpy, x0, y0, tx, ty, nan_pt = _point(
        H + n * 9, offs, OUT_H, OUT_W, IN_H, IN_W, PADDING, ALIGN, ACC)
    m00, m01, m10, m11, o00, o01, o10, o11, w00, w01, w10, w11 = _taps(x0, y0, tx, ty, mask & ~nan_pt, IN_H, IN_W,
                                                                       s_in_h, s_in_w)
    i = offs // OUT_W
    j = offs % OUT_W
    out_off = n * s_out_n + i.to(tl.int64) * s_out_h + j.to(tl.int64) * s_out_w
    src = IMG + n * s_in_n
    for c in range(0, C):
        base = src + c * s_in_c
        v = (tl.load(base + o00, mask=m00, other=0.0).to(ACC) * w00
             + tl.load(base + o01, mask=m01, other=0.0).to(ACC) * w01
             + tl.load(base + o10, mask=m10, other=0.0).to(ACC) * w10
             + tl.load(base + o11, mask=m11, other=0.0).to(ACC) * w11)
        v = tl.where(nan_pt, float("nan"), v)
        tl.store(OUT + out_off + c * s_out_c, v.to(OUT.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["C", "IN_H", "IN_W", "OUT_H", "OUT_W"])
def _hw_bwd_kernel(GO, IMG, H, GIMG, GH_PART, C, IN_H, IN_W, OUT_H, OUT_W, s_in_n, s_in_c, s_in_h, s_in_w,
                   s_out_n, s_out_c, s_out_h, s_out_w, PADDING: tl.constexpr, ALIGN: tl.constexpr,
                   ACC: tl.constexpr, NEED_IMG: tl.constexpr, NEED_H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < OUT_H * OUT_W
    x, y, gx, gy, inv_w, w_live, gx_live, gy_live, dpx_dgx, dpy_dgy, x0, y0, tx, ty, nan_pt = _point(
        H + n * 9, offs, OUT_H, OUT_W, IN_H, IN_W, PADDING, ALIGN, ACC)
    m00, m01, m10, m11, o00, o01, o10, o11, w00, w01, w10, w11 = _taps(x0, y0, tx, ty, mask & ~nan_pt, IN_H, IN_W,
                                                                       s_in_h, s_in_w)
    i = offs // OUT_W
    j = offs % OUT_W
    go_off = n * s_out_n + i.to(tl.int64) * s_out_h + j.to(tl.int64) * s_out_w
    src = IMG + n * s_in_n
    gsrc = GIMG + n * s_in_n
    dpx = tl.zeros([BLOCK], dtype=ACC)
    dpy = tl.zeros([BLOCK], dtype=ACC)
    for c in range(0, C):
        go = tl.load(GO + go_off + c * s_out_c, mask=mask, other=0.0).to(ACC)
        if NEED_H:
            base = src + c * s_in_c
            v00 = tl.load(base + o00, mask=m00, other=0.0).to(ACC)
            v01 = tl.load(base + o01, mask=m01, other=0.0).to(ACC)
            v10 = tl.load(base + o10, mask=m10, other=0.0).to(ACC)
            v11 = tl.load(base + o11, mask=m11, other=0.0).to(ACC)
            dpx += go * ((v01 - v00) * (1.0 - ty) + (v11 - v10) * ty)
            dpy += go * ((v10 - v00) * (1.0 - tx) + (v11 - v01) * tx)
        if NEED_IMG:
            gbase = gsrc + c * s_in_c
            tl.atomic_add(gbase + o00, go * w00, mask=m00)
            tl.atomic_add(gbase + o01, go * w01, mask=m01)
            tl.atomic_add(gbase + o10, go * w10, mask=m10)
            tl.atomic_add(gbase + o11, go * w11, mask=m11)
    if NEED_H:
        lx = tl.where(gx_live & mask, dpx * dpx_dgx, 0.0)
        ly = tl.where(gy_live & mask, dpy * dpy_dgy, 0.0)
        a0 = lx * inv_w
        a1 = ly * inv_w
        a2 = tl.where(w_live, -(lx * gx + ly * gy) * inv_w, 0.0)
        nan_h = nan_pt & mask  # a NaN point makes its sample's grad_H NaN
        a0 = tl.where(nan_h, float("nan"), a0)
        a1 = tl.where(nan_h, float("nan"), a1)
        a2 = tl.where(nan_h, float("nan"), a2)
        # partial sums laid out (N, 9, programs): the final sum runs along contiguous memory (as (N, programs, 9),
        # a strided reduction, it took 17.7 us beside an 86 us kernel on an H100, run 3)
        blocks = tl.num_programs(0)
        part = GH_PART + n * 9 * blocks + pid
        tl.store(part + 0 * blocks, tl.sum(a0 * x, axis=0))
        tl.store(part + 1 * blocks, tl.sum(a0 * y, axis=0))
        tl.store(part + 2 * blocks, tl.sum(a0, axis=0))
        tl.store(part + 3 * blocks, tl.sum(a1 * x, axis=0))
        tl.store(part + 4 * blocks, tl.sum(a1 * y, axis=0))
        tl.store(part + 5 * blocks, tl.sum(a1, axis=0))
        tl.store(part + 6 * blocks, tl.sum(a2 * x, axis=0))
        tl.store(part + 7 * blocks, tl.sum(a2 * y, axis=0))
        tl.store(part + 8 * blocks, tl.sum(a2, axis=0))


def _layout(x: torch.Tensor) -> torch.memory_format:
    # The rule of the C++ kernels (homography_checks.h): channels_last only when x is exactly that.
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _acc(img: torch.Tensor):
    return tl.float64 if opmath_dtype(img.dtype) == torch.float64 else tl.float32


@torch.library.custom_op("reidfast::homography_warp_forward_triton", mutates_args=())
def homography_warp_forward_triton(img: torch.Tensor, H: torch.Tensor, out_h: int, out_w: int, padding_mode: str,
                                   align_corners: bool) -> torch.Tensor:
    check_has_pixels(img)
    fmt = _layout(img)
    img = img.contiguous(memory_format=fmt)
    N, C, in_h, in_w = img.shape
    out = torch.empty((N, C, out_h, out_w), dtype=img.dtype, device=img.device).contiguous(memory_format=fmt)
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(out_h * out_w, _BLOCK), N)
    _hw_fwd_kernel[grid](
        img, H.contiguous(), out, C, in_h, in_w, out_h, out_w, *img.stride(), *out.stride(),
        PADDING=_PADDING[padding_mode], ALIGN=bool(align_corners), ACC=_acc(img), BLOCK=_BLOCK, num_warps=4,
    )
    return out


def _alert_nondeterministic_grad_img(img: torch.Tensor) -> None:
    if img.device.type != "cuda" or not torch.are_deterministic_algorithms_enabled():
        return
    msg = ("homography_warp (triton backward): the gradient in img uses atomic adds and is not deterministic; "
           "use the 'cpu' backend, or call torch.use_deterministic_algorithms(True, warn_only=True) to allow it")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg)
    else:
        raise RuntimeError(msg)


@torch.library.custom_op("reidfast::homography_warp_backward_triton", mutates_args=())
def homography_warp_backward_triton(grad_out: torch.Tensor, img: torch.Tensor, H: torch.Tensor, padding_mode: str,
                                    align_corners: bool, output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    check_has_pixels(img)
    need_img, need_h = bool(output_mask[0]), bool(output_mask[1])
    fmt = _layout(img)
    img = img.contiguous(memory_format=fmt)
    grad_out = grad_out.contiguous(memory_format=fmt)
    N, C, in_h, in_w = img.shape
    out_h, out_w = grad_out.shape[2:]
    acc_dtype = opmath_dtype(img.dtype)
    if need_img:
        _alert_nondeterministic_grad_img(img)
        grad_img_acc = torch.zeros(img.shape, dtype=acc_dtype, device=img.device).contiguous(memory_format=fmt)
    else:
        grad_img_acc = torch.empty((1,), dtype=acc_dtype, device=img.device)  # never written
    blocks = triton.cdiv(out_h * out_w, _BLOCK)
    partial = torch.zeros((N, 9, max(blocks, 1)), dtype=H.dtype, device=img.device)
    if (need_img or need_h) and grad_out.numel() > 0:
        _hw_bwd_kernel[(blocks, N)](
            grad_out, img, H.contiguous(), grad_img_acc, partial, C, in_h, in_w, out_h, out_w, *img.stride(),
            *grad_out.stride(), PADDING=_PADDING[padding_mode], ALIGN=bool(align_corners), ACC=_acc(img),
            NEED_IMG=need_img, NEED_H=need_h, BLOCK=_BLOCK, num_warps=4,
        )
    grad_img = grad_img_acc.to(img.dtype) if need_img else img.new_empty((0,))
    grad_H = partial.sum(dim=2).view(N, 3, 3) if need_h else H.new_empty((0,))
    return grad_img, grad_H


register_homography_op_pair("reidfast::homography_warp_forward_triton", "reidfast::homography_warp_backward_triton",
                            python_autograd=True)
