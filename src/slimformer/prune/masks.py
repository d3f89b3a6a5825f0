"""Pruning masks as pure tensor functions: scores -> which weights stay.

    keep = mask_rows(wanda_scores(w, x_norm), amount=0.5)     # each output row keeps its top 50%
    keep = mask_nm(magnitude_scores(w), n=2, m=4)             # 2:4: 2 of every 4 consecutive inputs pruned
    bits = pack_mask(keep); keep == unpack_mask(bits, w.shape[1])

A mask is a bool tensor shaped like the weight (out, in): True = kept. `amount` is the fraction
pruned. N:M follows the usual convention (NVIDIA 2:4): in every group of M consecutive input
weights of a row at most N are nonzero; 2:4 keeps 2 of 4, 4:8 keeps 4 of 8.
"""
from __future__ import annotations

import torch
from torch import Tensor


def magnitude_scores(w: Tensor) -> Tensor:
    """|W| (out, in)."""
    return w.detach().float().abs().contiguous()


def wanda_scores(w: Tensor, x_norm: Tensor) -> Tensor:
    """Wanda (Sun et al. 2023): |W_ij| * ||X_j||_2, with x_norm (in,) the L2 norm of each input
    channel over the calibration tokens. (out, in)."""
    if x_norm.shape != (w.shape[1],):
        raise ValueError(f"x_norm must be ({w.shape[1]},), got {tuple(x_norm.shape)}")
    return (w.detach().float().abs() * x_norm.float().to(w.device)[None, :]).contiguous()


def mask_rows(scores: Tensor, amount: float) -> Tensor:
    """Prune the `amount` lowest-scoring weights of each row (comparison group = output row,
    as Wanda does)."""
    out_f, in_f = scores.shape
    k = int(round(in_f * amount))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return keep
    idx = torch.topk(scores, k, dim=1, largest=False).indices
    keep.scatter_(1, idx, False)
    return keep


def mask_layer(scores: Tensor, amount: float) -> Tensor:
    """Prune the `amount` lowest-scoring weights of the whole matrix."""
    k = int(round(scores.numel() * amount))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return keep
    idx = torch.topk(scores.flatten(), k, largest=False).indices
    keep.reshape(-1)[idx] = False  # keep is contiguous: reshape is a view
    return keep


def global_threshold(scores: list[Tensor], amount: float, max_sample: int = 2**24) -> float:
    """The score below which `amount` of all weights of all layers fall (global magnitude
    pruning). Estimated on a sample of at most max_sample scores (exact below that)."""
    flat = torch.cat([s.flatten() for s in scores])
    if flat.numel() > max_sample:
        g = torch.Generator().manual_seed(0)
        flat = flat[torch.randint(0, flat.numel(), (max_sample,), generator=g)]
    k = int(round(flat.numel() * amount))
    if k <= 0:
        return float("-inf")
    return float(torch.kthvalue(flat, k).values)


def mask_nm(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M semi-structured: in every group of m consecutive inputs of a row, keep the n
    highest-scoring (2:4 keeps 2 of 4). The width must be a multiple of m."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise ValueError(f"N:M {n}:{m} needs the input width to be a multiple of {m}; got {in_f}")
    g = scores.reshape(out_f, in_f // m, m)
    idx = torch.topk(g, m - n, dim=2, largest=False).indices
    keep = torch.ones_like(g, dtype=torch.bool)
    keep.scatter_(2, idx, False)
    return keep.reshape(out_f, in_f)


def sparsity(keep: Tensor) -> float:
    return 1.0 - keep.float().mean().item()


def pack_mask(keep: Tensor) -> Tensor:
    """bool (out, in) -> uint8 (out, ceil(in / 8)), bit i of byte j = column 8j + i."""
    out_f, in_f = keep.shape
    pad = (-in_f) % 8
    k = torch.nn.functional.pad(keep.to(torch.uint8), (0, pad)).reshape(out_f, -1, 8)
    weights = (2 ** torch.arange(8, dtype=torch.int32)).to(torch.uint8)
    return (k * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(bits: Tensor, in_features: int) -> Tensor:
    """uint8 (out, ceil(in / 8)) -> bool (out, in)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    k = (bits.unsqueeze(-1) >> shifts) & 1
    return k.reshape(bits.shape[0], -1)[:, :in_features].bool()
