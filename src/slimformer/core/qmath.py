"""Quantization arithmetic on tensors: affine (de)quantization, per-channel, per-token and
group-wise schemes, and SQNR. No modules, no model walking.

Conventions
-----------
* Symmetric, `bits=b`: signed codes in [-(2^(b-1) - 1), 2^(b-1) - 1] (the "restricted" range,
  so +-max|x| map to +-qmax), zero point 0, scale = max|x| / (2^(b-1) - 1).
* Asymmetric: unsigned codes in [0, 2^b - 1], the range is widened to contain 0 so that 0 is
  exactly representable, scale = (max - min) / (2^b - 1), zero_point = round(-min / scale).
* Group-wise weights (the storage format GPTQ also writes) always use *unsigned* codes
  `q` in [0, 2^b - 1] with integer `zeros`, so they can be packed (see packing.py):
  `w ~= (q - zeros) * scales`. Symmetric group-wise uses zeros = 2^(b-1) and
  scale = max|w| / (2^(b-1) - 1).
* A scale that would be zero (an all-zero channel) is replaced by 1.0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_TINY = 1e-12  # scales at or below this are treated as "all zeros" and replaced by 1.0


def _check_bits(bits: int, lo: int = 2, hi: int = 16) -> None:
    if not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"bits must be an integer in [{lo}, {hi}], got {bits!r}")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes for `bits` (see module conventions)."""
    _check_bits(bits)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def qparams_from_minmax(
    xmin: Tensor, xmax: Tensor, bits: int = 8, symmetric: bool = True
) -> tuple[Tensor, Tensor]:
    """Scale (float32) and zero point (int32) from observed min/max (any matching shapes)."""
    qmin, qmax = qrange(bits, symmetric)
    xmin = torch.clamp(xmin.float(), max=0.0)
    xmax = torch.clamp(xmax.float(), min=0.0)
    if symmetric:
        scale = torch.maximum(-xmin, xmax) / qmax
    else:
        scale = (xmax - xmin) / (qmax - qmin)
    scale = torch.where(scale > _TINY, scale, torch.ones_like(scale))
    if symmetric:
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zp = torch.clamp(torch.round(-xmin / scale), qmin, qmax).to(torch.int32)
    return scale, zp


def _bcast(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Shape a per-channel (C,) tensor to broadcast against x along `axis`."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _code_dtype(bits: int, symmetric: bool) -> torch.dtype:
    if bits <= 8:
        return torch.int8 if symmetric else torch.uint8
    return torch.int32


def quantize(
    x: Tensor, scale: Tensor, zp: Tensor, bits: int = 8, symmetric: bool = True, *, axis: int | None = None
) -> Tensor:
    """Integer codes clamp(round(x / scale) + zp). `scale`/`zp` are scalars, broadcastable
    to x, or (C,) per-channel along `axis`. Returns int8 (symmetric) / uint8 (asymmetric)
    for bits <= 8, else int32."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _bcast(scale, x, axis), _bcast(zp, x, axis)
    q = torch.clamp(torch.round(x.float() / s) + z.float(), qmin, qmax)
    return q.to(_code_dtype(bits, symmetric))


def dequantize(q: Tensor, scale: Tensor, zp: Tensor, *, axis: int | None = None) -> Tensor:
    """(q - zp) * scale as float32."""
    return (q.float() - _bcast(zp, q, axis).float()) * _bcast(scale, q, axis)


def fake_quantize(
    x: Tensor, scale: Tensor, zp: Tensor, bits: int = 8, symmetric: bool = True, *, axis: int | None = None
) -> Tensor:
    """dequantize(quantize(x)) in x's dtype. If x requires grad, the result passes gradients
    straight through (STE: x + (xq - x).detach())."""
    xq = dequantize(quantize(x, scale, zp, bits, symmetric, axis=axis), scale, zp, axis=axis).to(x.dtype)
    return x + (xq - x).detach() if x.requires_grad else xq


def quantize_per_channel_symmetric(w: Tensor, bits: int = 8, axis: int = 0) -> tuple[Tensor, Tensor]:
    """Symmetric per-channel weight quantization; one scale per index of `axis`.
    Returns (q int8 like w, scale float32 (w.shape[axis],))."""
    if bits > 8:
        raise ValueError(f"quantize_per_channel_symmetric stores int8; bits must be <= 8, got {bits}")
    absmax = w.detach().movedim(axis, 0).reshape(w.shape[axis], -1).abs().amax(dim=1)  # (C,)
    scale, zp = qparams_from_minmax(-absmax, absmax, bits, True)
    return quantize(w, scale, zp, bits, True, axis=axis), scale


def quantize_rows_int8(w: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """quantize_per_channel_symmetric(w.float(), 8, axis=0) of a (rows, cols) weight in any float
    dtype, converted to float32 `chunk` rows at a time (the same codes; a bf16 vocabulary-sized
    table never exists whole in float32). Returns (q int8 (rows, cols), scale float32 (rows,))."""
    rows = w.shape[0]
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    for i in range(0, rows, chunk):
        qi, si = quantize_per_channel_symmetric(w[i:i + chunk].detach().float(), 8, axis=0)
        q[i:i + chunk] = qi
        scale[i:i + chunk] = si
    return q, scale


def quantize_per_token(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric activation quantization, one scale per row (last dim reduced).
    x (..., D) -> (q int8 (..., D), scale float32 (..., 1)); x ~= q * scale."""
    if bits > 8:
        raise ValueError(f"quantize_per_token stores int8; bits must be <= 8, got {bits}")
    absmax = x.detach().abs().amax(dim=-1, keepdim=True).float()  # (..., 1)
    qmax = 2 ** (bits - 1) - 1
    # the same codes as quantize(x, *qparams_from_minmax(-absmax, absmax, bits)), in two passes
    # over x instead of five (this runs on every activation of a W8A8 model)
    scale = absmax / qmax
    scale = torch.where(scale > _TINY, scale, torch.ones_like(scale))
    q = torch.div(x.detach().float(), scale).round_().clamp_(-qmax, qmax)
    return q.to(torch.int8), scale


# ---------------------------------------------------------------- group-wise (weights)


def resolve_group_size(in_features: int, group_size: int | None) -> int:
    """None or -1 means one group per row. A group size that does not divide in_features leaves
    a shorter last group (e.g. 576 inputs, group 128: four groups of 128 and one of 64), with
    its own scale and zero computed on its own columns."""
    if group_size is None or group_size == -1:
        return in_features
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive integer, -1 or None, got {group_size!r}")
    return min(group_size, in_features)


def n_groups_for(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def group_qparams(w: Tensor, bits: int, symmetric: bool, clip: bool = False,
                  float_zero: bool = False) -> tuple[Tensor, Tensor]:
    """Params of one group of columns. w (out, g) -> scale (out,) float32, zero (out,) float32
    holding integer codes (unsigned-code convention of the module docstring).

    float_zero (asymmetric only): the grid spans exactly [min, max] of the group, scale =
    (max - min) / (2^bits - 1) and zero = -min / scale unrounded (like GGUF Q4_1's per-block
    scale and min), instead of a range widened to contain 0 with an integer zero code.

    clip: search, per row, the range shrink factor p in {1.00, 0.99, ..., 0.80} applied to
    (min, max) that minimises sum |w - dequant(quant(w))|^2.4 (the grid search of the GPTQ
    reference implementation): for 4 bits, clipping a few outliers buys a finer step for all
    the other weights. p = 1 is a candidate, so the error is never worse than min-max."""
    _check_bits(bits, 2, 8)
    maxq = 2**bits - 1
    if float_zero and symmetric:
        raise ValueError("float_zero needs an asymmetric grid (symmetric=False)")
    best = _minmax_params(w, bits, symmetric, float_zero)
    if not clip:
        return best
    wf = w.float()
    best_err = _group_error(wf, *best, maxq)
    for i in range(1, _CLIP_STEPS + 1):
        p = 1.0 - i / 100
        scale, zero = _minmax_params(w * p, bits, symmetric, float_zero)
        err = _group_error(wf, scale, zero, maxq)
        better = err < best_err
        if better.any():
            best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
            best_err = torch.where(better, err, best_err)
    return best


_CLIP_STEPS = 20  # shrink factors down to 0.80


def _minmax_params(w: Tensor, bits: int, symmetric: bool, float_zero: bool = False) -> tuple[Tensor, Tensor]:
    maxq = 2**bits - 1
    if float_zero:
        lo, hi = w.float().amin(1), w.float().amax(1)
        scale = (hi - lo) / maxq
        scale = torch.where(scale > _TINY, scale, torch.ones_like(scale))
        return scale, -lo / scale
    if symmetric:
        half = 2 ** (bits - 1)
        scale, _ = qparams_from_minmax(-w.abs().amax(1), w.abs().amax(1), bits, True)
        return scale, torch.full_like(scale, float(half))
    scale, zp = qparams_from_minmax(w.amin(1), w.amax(1), bits, False)
    return scale, torch.clamp(zp.float(), 0, maxq)


def _group_error(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    q = (quantize_codes(w, scale[:, None], zero[:, None], maxq) - zero[:, None]) * scale[:, None]
    return (w - q).abs().pow(2.4).sum(1)


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Unsigned codes clamp(round(w / scale + zero), 0, maxq) as float32; scale/zero broadcast
    (zero may be fractional: float zero points)."""
    return torch.clamp(torch.round(w.float() / scale + zero), 0, maxq)


def quantize_groupwise(
    w: Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False, clip: bool = False,
    float_zero: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest group-wise weight quantization along the input dim (clip, float_zero: see
    group_qparams). w (out, in) -> q uint8 (out, in) codes in [0, 2^bits - 1],
    scales float32 (out, n_groups), zeros uint8 (out, n_groups), or float32 with float_zero;
    n_groups = ceil(in / group_size)."""
    if w.dim() != 2:
        raise ValueError(f"quantize_groupwise expects a 2-D weight (out, in), got shape {tuple(w.shape)}")
    out_f, in_f = w.shape
    gs = resolve_group_size(in_f, group_size)
    wf = w.detach().float()
    qs, ss, zs = [], [], []
    for g0 in range(0, in_f, gs):
        seg = wf[:, g0 : g0 + gs]  # (out, <= gs)
        scale, zero = group_qparams(seg, bits, symmetric, clip, float_zero)  # (out,)
        qs.append(quantize_codes(seg, scale[:, None], zero[:, None], 2**bits - 1))
        ss.append(scale)
        zs.append(zero)
    zeros = torch.stack(zs, 1)
    return torch.cat(qs, 1).to(torch.uint8), torch.stack(ss, 1), zeros if float_zero else zeros.to(torch.uint8)


def dequantize_groupwise(q: Tensor, scales: Tensor, zeros: Tensor, g_idx: Tensor | None = None,
                         group_size: int | None = None) -> Tensor:
    """(q - zeros) * scales -> float32 (out, in). Column j uses group g_idx[j]; by default
    g_idx = j // group_size (group_size defaults to in / n_groups when that divides)."""
    out_f, in_f = q.shape
    n_groups = scales.shape[1]
    if g_idx is None:
        if group_size is None:
            if in_f % n_groups:
                raise ValueError(f"in_features={in_f} is not a multiple of n_groups={n_groups}; pass group_size")
            group_size = in_f // n_groups
        g_idx = torch.arange(in_f, device=q.device) // group_size
    s = scales.float()[:, g_idx]  # (out, in)
    z = zeros.float()[:, g_idx]  # (out, in)
    return (q.float() - z) * s


def sqnr(reference: Tensor, approx: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 20 log10(||ref|| / ||ref - approx||);
    inf when they are equal."""
    ref = reference.detach().double()
    noise = torch.linalg.vector_norm(ref - approx.detach().double()).item()
    signal = torch.linalg.vector_norm(ref).item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 20 * math.log10(signal / noise)
