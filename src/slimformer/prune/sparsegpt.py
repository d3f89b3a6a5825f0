"""SparseGPT (Frantar & Alistarh 2023) on tensors: prune a linear layer's weight to a sparsity
(unstructured or N:M) and reconstruct the remaining weights against the calibration Hessian,
optionally quantizing the kept weights in the same pass (joint sparse + int4/int8).

    H = 2/n sum x x^T (in, in)                         (models.activations.HessianAccumulator)
    r = sparsegpt(w, H, amount=0.5)                    # or n=2, m=4; bits=4, group_size=128
    r.weight (out, in) with r.mask zeros; r.codes/scales/zeros when bits is set

Columns are processed left to right in blocks (lazy batch updates). In each block the mask is
chosen by the OBS saliency w^2 / [H^-1]_jj^2 (unstructured: the lowest `amount` of the block; N:M:
per group of m columns of each row), and each column's pruning (and rounding) error is spread
over the columns not yet processed through the inverse Hessian's Cholesky factor, as in GPTQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.hessian import inverse_hessian_cholesky, quadratic_error, working_copy
from ..core.qmath import group_qparams, quantize_codes


@dataclass
class SparseGPTResult:
    weight: Tensor  # (out, in) float32, zeros where pruned (dequantized values when bits is set)
    mask: Tensor  # (out, in) bool, True = kept
    codes: Tensor | None = None  # (out, in) uint8 grid codes (bits set)
    scales: Tensor | None = None  # (out, n_groups) float32
    zeros: Tensor | None = None  # (out, n_groups) uint8
    error: float = 0.0  # tr(D H D^T) / tr(W H W^T), D = W - result: the layer-output error, relative


@torch.no_grad()
def sparsegpt(w: Tensor, H: Tensor, amount: float = 0.5, n: int = 0, m: int = 0, blocksize: int = 128,
              damp: float = 0.01, bits: int | None = None, group_size: int = 128) -> SparseGPTResult:
    """Prune (and optionally quantize) `w` (out, in) with calibration Hessian H (in, in).

    amount: fraction pruned (unstructured; ignored when n:m is given). n, m: N:M, at most n of
    every m consecutive inputs of a row kept. bits (4 or 8): also round the kept weights to an
    asymmetric group-wise grid (group_size columns, integer zero points), the grid of each group
    set from the group's current weights when the pass reaches it."""
    W = w.detach().to(torch.float32, copy=True)
    out_f, in_f = W.shape
    H = H.detach()
    dead = torch.diag(H) == 0  # dead inputs: diag 1 in the factored copy, weight columns zeroed
    W[:, dead] = 0.0
    Hc = inverse_hessian_cholesky(lambda: working_copy(H, dead), damp).float()  # (in, in) upper
    mask = torch.ones_like(W, dtype=torch.bool)
    nm = n > 0 and m > 0
    if nm and in_f % m:
        raise ValueError(f"N:M {n}:{m} needs the input width to be a multiple of {m}; got {in_f}")
    if nm:
        blocksize = max(m, blocksize - blocksize % m)
    maxq = 2 ** bits - 1 if bits else 0
    codes = torch.zeros_like(W, dtype=torch.uint8) if bits else None
    n_groups = -(-in_f // group_size) if bits else 0
    scales = torch.ones(out_f, n_groups) if bits else None
    zeros = torch.zeros(out_f, n_groups) if bits else None
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hc[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if not nm:
            sal = W1.pow(2) / d.pow(2)[None, :]  # (out, count)
            k = int(round(sal.numel() * amount))
            m1 = torch.ones_like(W1, dtype=torch.bool)
            if k > 0:
                idx = torch.topk(sal.flatten(), k, largest=False).indices
                m1.view(-1)[idx] = False
        else:
            m1 = torch.ones_like(W1, dtype=torch.bool)
        for i in range(count):
            col = i1 + i
            if nm and i % m == 0:
                sal = W1[:, i:i + m].pow(2) / d[i:i + m].pow(2)[None, :]
                idx = torch.topk(sal, m - n, dim=1, largest=False).indices
                m1[:, i:i + m].scatter_(1, idx, False)
            if bits and col % group_size == 0:
                g = W[:, col:col + group_size].clone()
                if col + group_size > i2:  # the group extends past this block: use the updated values here
                    g[:, : i2 - col] = W1[:, i:i + (i2 - col)]
                else:
                    g = W1[:, i:i + group_size]
                s, z = group_qparams(g, bits, False)
                scales[:, col // group_size], zeros[:, col // group_size] = s, z
            wcol = W1[:, i]
            q = torch.where(m1[:, i], wcol, torch.zeros_like(wcol))
            if bits:
                s, z = scales[:, col // group_size], zeros[:, col // group_size]
                c = quantize_codes(q, s, z, maxq)
                codes[:, col] = c.to(torch.uint8)
                q = torch.where(m1[:, i], (c - z) * s, torch.zeros_like(q))
            Q1[:, i] = q
            err = (wcol - q) / d[i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = m1
        W[:, i2:] -= Err1 @ Hc[i1:i2, i2:]
    W[~mask] = 0.0
    H = H.clone() if dead.any() else H
    H[dead, dead] = 1.0  # the error on the H that was factored (dead inputs' columns are 0 in W)
    den = float(quadratic_error(w.float(), None, H).sum())
    err = float(quadratic_error(w.float(), W, H).sum()) / den if den > 0 else 0.0
    return SparseGPTResult(W, mask, codes, scales, zeros.to(torch.uint8) if bits else None, err)
