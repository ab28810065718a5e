"""Winograd F(2x2, 3x3) convolution for the CPU: 3x3, stride 1, padding 1, no dilation,
no groups, float32 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks").

Why: on AVX2 hosts oneDNN's direct 3x3 convolutions already run near the core's GEMM
peak, so the only way to a faster training step is less arithmetic. F(2x2, 3x3) computes
each 2x2 output tile from a 4x4 input tile with 16 instead of 36 multiplies per channel
pair: the work becomes 16 matrix products (tiles x C_in) @ (C_in x C_out) plus cheap
add/subtract transforms. Forward, input gradient and weight gradient all take that form
(the input gradient is the same convolution with the weight flipped and transposed; the
weight gradient is the adjoint of the forward's transforms). It pays for wide layers (the
FCOS towers, FPN outputs, ResNet res3-res5) on large enough maps: models/fast_conv.py
decides where; measured in benchmarks/README.md, "Winograd" (issue 25).
The results equal `F.conv2d`'s to float rounding (relative error ~3e-6 for 256 channels).

    winograd_conv3x3(x (B, C, H, W) float32, weight (O, C, 3, 3), bias (O,) or None)
        -> (B, O, H, W), memory format channels_last (the transforms run in NHWC)
    weight_transform(weight (O, C, 3, 3)) -> (16, O, C)   U = G w G^T, one matrix per tile cell

Tiles are processed in chunks of about `CHUNK` tiles so that each chunk's transformed
input (16 x chunk x C) stays in cache for its matrix products (measured, 1 thread: one
product over all 2816 tiles of a 64x88 map ran at 42 GFLOP/s, 512-1024-tile ones at 60-70).
"""
from __future__ import annotations

import torch

CHUNK = 768
# F(2x2, 3x3) weight transform (Lavin & Gray, Eq. 9); the input (B^T) and output (A^T)
# transforms are written out as adds in _input_tiles / _output_tiles
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _kron_g(like: torch.Tensor) -> torch.Tensor:
    """kron(G, G) (16, 9): vec(G w G^T) = kron(G, G) vec(w) for one 3x3 kernel."""
    g = torch.tensor(_G, dtype=like.dtype, device=like.device)
    return torch.kron(g, g)


def weight_transform(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (16, O, C): U = G w G^T per channel pair, cell-major; one GEMM over
    all channel pairs, written in the layout it comes out in (a (16, C, O) copy of a
    512x512 layer's U cost 3x the forward's matrix products)."""
    o, c = weight.shape[:2]
    return (_kron_g(weight) @ weight.reshape(o * c, 9).T).view(16, o, c)


# The flipped kernel's U: G J = P G with J the 3-row reversal and P swapping rows 0 and 3,
# so U(flip(w)) is U(w) with cells (i, j) -> (3 - i if i in (0, 3) else i, ...).
_FLIP = (3, 1, 2, 0)
_CELL_FLIP = tuple(4 * _FLIP[i] + _FLIP[j] for i in range(4) for j in range(4))


def _weight_from_u(du: torch.Tensor) -> torch.Tensor:
    """Adjoint of weight_transform: (16, O, C) -> (O, C, 3, 3), dw = G^T du G."""
    o, c = du.shape[1:]
    return (du.view(16, o * c).T @ _kron_g(du)).view(o, c, 3, 3)


def _padded_nhwc(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 2*th + 2, 2*tw + 2, C): NHWC, one zero row/column of padding
    before, enough after to fill whole tiles (only the border is zeroed: one pass less)."""
    b, c, h, w = x.shape
    xp = x.new_empty(b, 2 * th + 2, 2 * tw + 2, c)
    xp[:, 0].zero_()
    xp[:, h + 1:].zero_()
    xp[:, 1:h + 1, 0].zero_()
    xp[:, 1:h + 1, w + 1:].zero_()
    xp[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    return xp


def _input_tiles(xp: torch.Tensor, r0: int, nr: int, tw: int) -> torch.Tensor:
    """B^T d B for tile rows r0..r0+nr of the padded NHWC input -> (16, B*nr*tw, C)."""
    b, _, wp, c = xp.shape
    r = [xp[:, 2 * r0 + k:2 * (r0 + nr) + k:2] for k in range(4)]  # (B, nr, Wp, C)
    t = xp.new_empty(4, b, nr, wp, c)
    torch.sub(r[0], r[2], out=t[0])
    torch.add(r[1], r[2], out=t[1])
    torch.sub(r[2], r[1], out=t[2])
    torch.sub(r[1], r[3], out=t[3])
    col = [t[:, :, :, k:k + 2 * tw:2] for k in range(4)]  # (4, B, nr, tw, C)
    v = xp.new_empty(4, 4, b, nr, tw, c)
    torch.sub(col[0], col[2], out=v[:, 0])
    torch.add(col[1], col[2], out=v[:, 1])
    torch.sub(col[2], col[1], out=v[:, 2])
    torch.sub(col[1], col[3], out=v[:, 3])
    return v.view(16, -1, c)


def _output_tiles(m: torch.Tensor, out: torch.Tensor) -> None:
    """A^T M A: (16, B*nr*tw, O) -> `out`, a (B, nr, 2, tw, 2, O) view of the output."""
    b, nr, _, tw, _, o = out.shape
    m = m.view(4, 4, b, nr, tw, o)
    s = m.new_empty(2, 4, b, nr, tw, o)
    torch.add(m[0], m[1], out=s[0]).add_(m[2])
    torch.sub(m[1], m[2], out=s[1]).sub_(m[3])
    yv = out.permute(2, 0, 1, 3, 4, 5)  # (2, B, nr, tw, 2, O)
    torch.add(s[:, 0], s[:, 1], out=yv[..., 0, :]).add_(s[:, 2])
    torch.sub(s[:, 1], s[:, 2], out=yv[..., 1, :]).sub_(s[:, 3])


def _grad_tiles(g: torch.Tensor, r0: int, nr: int, tw: int) -> torch.Tensor:
    """Adjoint of _output_tiles, A dY A^T: output-gradient rows of tiles r0..r0+nr of the
    NHWC (B, >= 2*th, >= 2*tw, O) gradient (zero beyond the image) -> (16, B*nr*tw, O)."""
    b, _, _, o = g.shape
    g = g[:, :, :2 * tw]
    g0, g1 = g[:, 2 * r0:2 * (r0 + nr):2], g[:, 2 * r0 + 1:2 * (r0 + nr):2]  # (B, nr, 2tw, O)
    t = g.new_empty(4, b, nr, 2 * tw, o)
    t[0] = g0
    torch.add(g0, g1, out=t[1])
    torch.sub(g0, g1, out=t[2])
    torch.neg(g1, out=t[3])
    c0, c1 = t[:, :, :, 0::2], t[:, :, :, 1::2]  # (4, B, nr, tw, O)
    dm = g.new_empty(4, 4, b, nr, tw, o)
    dm[:, 0] = c0
    torch.add(c0, c1, out=dm[:, 1])
    torch.sub(c0, c1, out=dm[:, 2])
    torch.neg(c1, out=dm[:, 3])
    return dm.view(16, -1, o)


def _rows_per_chunk(b: int, tw: int) -> int:
    return max(1, CHUNK // max(b * tw, 1))


def _conv_padded(xp: torch.Tensor, u: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Padded NHWC input (B, 2th+2, 2tw+2, C), U (16, C, O) (any strides) -> NHWC
    (B, 2th, 2tw, O)."""
    b = xp.shape[0]
    y = xp.new_empty(b, th, 2, tw, 2, u.shape[2])
    step = _rows_per_chunk(b, tw)
    for r0 in range(0, th, step):
        nr = min(step, th - r0)
        _output_tiles(torch.bmm(_input_tiles(xp, r0, nr, tw), u), y[:, r0:r0 + nr])
    return y.view(b, 2 * th, 2 * tw, u.shape[2])


def _weight_grad(xp: torch.Tensor, gp: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """dL/dw (O, C, 3, 3) from the padded NHWC input and the NHWC gradient (B, >= 2th,
    >= 2tw, O), zero beyond the image."""
    b, c, o = xp.shape[0], xp.shape[3], gp.shape[3]
    du = xp.new_zeros(16, o, c)
    step = _rows_per_chunk(b, tw)
    for r0 in range(0, th, step):
        nr = min(step, th - r0)
        v = _input_tiles(xp, r0, nr, tw)
        du.baddbmm_(_grad_tiles(gp, r0, nr, tw).transpose(1, 2), v)
    return _weight_from_u(du)


def _tiles(h: int, w: int) -> tuple[int, int]:
    return (h + 1) // 2, (w + 1) // 2


def _to_nchw_view(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """NHWC (B, Hp, Wp, O) cropped to (h, w) -> (B, O, h, w) channels_last."""
    if y.shape[1] != h or y.shape[2] != w:
        y = y[:, :h, :w].contiguous()
    return y.permute(0, 3, 1, 2)


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        h, w = x.shape[-2:]
        th, tw = _tiles(h, w)
        u = weight_transform(weight)
        xp = _padded_nhwc(x, th, tw)
        y = _conv_padded(xp, u.transpose(1, 2), th, tw)
        if bias is not None:
            y.add_(bias)
        # the padded NHWC input, not x: the weight gradient reads it again (one copy less)
        ctx.save_for_backward(xp, u)
        ctx.has_bias, ctx.hw = bias is not None, (h, w)
        return _to_nchw_view(y, h, w)

    @staticmethod
    def backward(ctx, grad_out):
        xp, u = ctx.saved_tensors
        h, w = ctx.hw
        th, tw = _tiles(h, w)
        gx = gw = gb = None
        # padded once: the input gradient's convolution reads it with its border, the
        # weight gradient from (1, 1) on (zero beyond the image either way)
        gp = _padded_nhwc(grad_out, th, tw) if any(ctx.needs_input_grad[:2]) else None
        if ctx.needs_input_grad[0]:
            # dL/dx: the same convolution of dL/dy with the weight flipped and transposed
            u_flip = u[list(_CELL_FLIP)]  # (16, O, C): O in, C out
            gx = _to_nchw_view(_conv_padded(gp, u_flip, th, tw), h, w)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(xp, gp[:, 1:, 1:], th, tw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(dim=(0, 2, 3))
        return gx, gw, gb


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` by Winograd F(2x2, 3x3) (see module doc)."""
    if x.dim() != 4 or weight.shape[2:] != (3, 3) or x.shape[1] != weight.shape[1]:
        raise ValueError(f"winograd_conv3x3: needs x (B, C, H, W) and weight (O, C, 3, 3), got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    return _Winograd3x3.apply(x, weight, bias)
