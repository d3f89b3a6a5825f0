"""SparseLinear: a linear layer whose weight is mostly zeros, stored compactly.

On disk and in the state dict: a bitmask (1 bit per weight, packed 8 per byte) and only the kept
values, as float32, or as int8 / int4 grid codes (int4 packed two per byte) with float32 group
scales and uint8 zero points (SparseGPT's joint mode). 50% unstructured float32 is 4.125 of 8
bytes per pair of weights, about 53% of dense; the 2:4 pattern is stored the same way.

Run time: the dense weight is rebuilt once (first forward after construction or a load) and kept
in memory, so a forward costs what a dense Linear costs: this storage saves bytes on disk, not
time or memory at run time (see the README for measured sparse-kernel speeds on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.packing import pack_int4, unpack_int4
from .masks import pack_mask, unpack_mask


class SparseLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, nnz: int, bits: int = 32,
                 group_size: int = 128):
        super().__init__()
        if bits not in (32, 8, 4):
            raise ValueError(f"bits={bits}; accepted: 32 (float values), 8, 4")
        self.in_features, self.out_features, self.nnz, self.bits = in_features, out_features, nnz, bits
        self.group_size = group_size
        self.register_buffer("mask_bits", torch.zeros(out_features, -(-in_features // 8), dtype=torch.uint8))
        if bits == 32:
            self.register_buffer("values", torch.zeros(nnz))
        else:
            n_groups = -(-in_features // group_size)
            self.register_buffer("codes", torch.zeros(nnz if bits == 8 else -(-nnz // 2), dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, n_groups))
            self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._dense: torch.Tensor | None = None

    slimformer_weight_numel = property(lambda self: self.in_features * self.out_features)

    @classmethod
    def from_dense(cls, lin: nn.Module, weight: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor | None = None,
                   scales: torch.Tensor | None = None, zeros: torch.Tensor | None = None, bits: int = 32,
                   group_size: int = 128) -> "SparseLinear":
        """weight (out, in) with zeros where mask is False; codes/scales/zeros for bits 4/8."""
        bias = getattr(lin, "bias", None)
        new = cls(weight.shape[1], weight.shape[0], bias is not None, int(mask.sum()), bits, group_size)
        with torch.no_grad():
            new.mask_bits.copy_(pack_mask(mask))
            if bits == 32:
                new.values.copy_(weight.float()[mask])
            else:
                kept = codes[mask].to(torch.uint8)
                new.codes.copy_(kept if bits == 8 else pack_int4(kept.unsqueeze(0))[0])
                new.scales.copy_(scales.float())
                new.zeros.copy_(zeros.to(torch.uint8))
            if bias is not None:
                new.bias.copy_(bias.detach())
        return new

    def mask(self) -> torch.Tensor:
        return unpack_mask(self.mask_bits, self.in_features)

    def dense_weight(self) -> torch.Tensor:
        """(out, in) float32, zeros where pruned."""
        keep = self.mask()
        w = torch.zeros(self.out_features, self.in_features, device=self.mask_bits.device)
        if self.bits == 32:
            w[keep] = self.values.float()
            return w
        q = self.codes if self.bits == 8 else unpack_int4(self.codes.unsqueeze(0), self.nnz)[0]
        rows, cols = keep.nonzero(as_tuple=True)  # row-major, the order the values were stored in
        g = cols // self.group_size
        w[rows, cols] = (q.float() - self.zeros[rows, g].float()) * self.scales[rows, g]
        return w

    def _load_from_state_dict(self, *args, **kwargs):
        self._dense = None
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense is None or self._dense.device != x.device:
            self._dense = self.dense_weight().to(x.dtype)
        return F.linear(x, self._dense, self.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, nnz={self.nnz} "
                f"({1 - self.nnz / (self.in_features * self.out_features):.1%} sparse), "
                f"values={'float32' if self.bits == 32 else f'int{self.bits} g{self.group_size}'}")


def restore_sparse_linear(model, name, d) -> SparseLinear:
    return SparseLinear(d["in"], d["out"], d["bias"], d["nnz"], d.get("bits", 32), d.get("group_size", 128))
