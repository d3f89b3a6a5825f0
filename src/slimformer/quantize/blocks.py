"""Asymmetric 4-bit block quantization along a table's rows (the token-embedding table of the
ONNX export, `GatherBlockQuantized`): pure tensor math."""
from __future__ import annotations

import torch
from torch import Tensor

_MAXQ = 15  # 4-bit unsigned codes 0..15




@torch.no_grad()
def quantize_blocks(w: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit block quantization along the last dim.

    w (V, H) float -> q uint8 (V, H) codes 0..15, scale float32 (V, nb), zero uint8 (V, nb),
    nb = ceil(H / block_size); a shorter last block is quantized on its own values.
    Per block: codes from its [min, max] range widened to contain 0 (a zero point is a code in
    0..15, so the grid always spans 0), then the scale refitted by least squares to those codes.
    On MiniLM's table, shrinking the range to clip outliers (searched per block for the least
    squared error) gained only 0.1-0.4 dB SQNR, so it is not done."""
    if w.dim() != 2:
        raise ValueError(f"quantize_blocks expects a 2-D table (rows, dim), got shape {tuple(w.shape)}")
    rows, dim = w.shape
    nb = -(-dim // block_size)
    x = w.detach().float()
    pad = nb * block_size - dim
    valid = torch.ones(1, nb * block_size)
    if pad:  # pad the last block with its own last value: it moves neither min nor max
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], 1)
        valid[:, dim:] = 0
    x = x.reshape(rows, nb, block_size)  # (V, nb, bs)
    valid = valid.reshape(1, nb, block_size)  # 1 for real values, 0 for padding
    lo, hi = x.amin(-1).clamp(max=0.0), x.amax(-1).clamp(min=0.0)  # (V, nb)
    scale = ((hi - lo) / _MAXQ).clamp_min(1e-12)  # an all-zero block: any scale, codes = zero
    zero = torch.clamp(torch.round(-lo / scale), 0, _MAXQ)
    q = torch.clamp(torch.round(x / scale[..., None]) + zero[..., None], 0, _MAXQ)  # (V, nb, bs)
    d = (q - zero[..., None]) * valid  # signed codes, 0 where padded
    num, den = (d * x).sum(-1), (d * d).sum(-1)
    scale = torch.where(den > 0, num / den.clamp_min(1e-30), scale)  # least-squares scale for these codes
    q = q.reshape(rows, nb * block_size)[:, :dim]
    return q.to(torch.uint8), scale.float(), zero.to(torch.uint8)


def dequantize_blocks(q: Tensor, scale: Tensor, zero: Tensor, block_size: int) -> Tensor:
    """(q - zero) * scale, blocks along the last dim -> float32 (V, H)."""
    idx = torch.arange(q.shape[-1]) // block_size
    return (q.float() - zero.float()[:, idx]) * scale.float()[:, idx]


def pack_nibbles(q: Tensor) -> Tensor:
    """uint8 codes 0..15 (..., n) -> (..., ceil(n / 2)), low nibble = even index (ORT's layout)."""
    from ..core.packing import pack_int4

    return pack_int4(q)


