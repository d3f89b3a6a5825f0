"""Bit packing of 4-bit codes: two nibbles per byte along the last dim, low nibble = even column.

pack_int4:   uint8 (..., in) with values 0..15 -> uint8 (..., ceil(in / 2))
unpack_int4: uint8 (..., ceil(in / 2)), in     -> uint8 (..., in)
An odd `in` is padded with a zero high nibble in the last byte.
"""
from __future__ import annotations

import torch
from torch import Tensor


def pack_int4(q: Tensor) -> Tensor:
    if q.dtype.is_floating_point or q.dtype == torch.bool or q.dtype.is_complex:
        raise ValueError(f"pack_int4 expects integer codes (uint8), got dtype {q.dtype}")
    if q.dim() == 0:
        raise ValueError("pack_int4 expects at least 1 dimension, got a scalar")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(
            f"pack_int4 accepts codes in 0..15, got values in [{int(q.min())}, {int(q.max())}]"
        )
    q = q.to(torch.uint8)
    if q.shape[-1] % 2:  # pad odd width with a zero column
        q = torch.nn.functional.pad(q, (0, 1))
    lo, hi = q[..., 0::2], q[..., 1::2]  # (..., ceil(in/2)) each
    return lo | (hi << 4)


def unpack_int4(packed: Tensor, in_features: int) -> Tensor:
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 expects a uint8 tensor, got dtype {packed.dtype}")
    n_bytes = packed.shape[-1]
    if in_features not in (2 * n_bytes, 2 * n_bytes - 1) or in_features <= 0:
        raise ValueError(
            f"in_features={in_features} does not fit {n_bytes} packed bytes "
            f"(accepted: {2 * n_bytes - 1} or {2 * n_bytes})"
        )
    lo, hi = packed & 0x0F, packed >> 4  # (..., n_bytes) each
    out = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], 2 * n_bytes)
    return out[..., :in_features].contiguous()
