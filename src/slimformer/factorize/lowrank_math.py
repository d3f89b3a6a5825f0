"""Low-rank math on tensors (no modules): truncated SVD of a weight seen through a weighting, the
whitening of SVD-LLM, and rank allocation to a parameter budget.

Convention: W is (out x in) and a layer computes y = W x. A factorization returns a (out x r) and
b (r x in) with W ~= a @ b.

- svd:     minimises ||W - a b||_F.
- fwsvd:   rows weighted by Fisher importance I (out,): minimises ||diag(sqrt I) (W - a b)||_F.
- asvd:    columns scaled by activation magnitudes s (in,): minimises ||(W - a b) diag(s)||_F.
- svd_llm: whitened by S, the Cholesky factor of the calibration Gram matrix X X^T = S S^T:
           minimises ||(W - a b) X||_F, and ||(W - a b) X||_F^2 equals the sum of the squares of
           the truncated singular values of W S (Wang et al., ICLR 2025, Theorem 1).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor


@dataclasses.dataclass
class Factors:
    a: Tensor        # (out, r)
    b: Tensor        # (r, in)
    dropped: float   # sum of squares of the truncated singular values of the weighted matrix
    energy: float    # sum of squares of all of them


def break_even_rank(out_f: int, in_f: int) -> int:
    """The largest rank whose pair is smaller than the dense layer: r (in + out) < in * out."""
    return (out_f * in_f - 1) // (out_f + in_f)


def whitening(H: Tensor, damp: float = 1e-5) -> Tensor:
    """Lower-triangular S with S S^T = H + eps I (H: the Gram matrix X X^T of a layer's inputs,
    in x in). eps grows from damp * mean(diag H) until the Cholesky factorisation succeeds
    (a rank-deficient H: channels that are always zero, fewer tokens than channels)."""
    H = H.double()
    mean = H.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    eps = damp
    for _ in range(12):
        S, info = torch.linalg.cholesky_ex(H + eps * mean * eye)
        if int(info) == 0:
            return S
        eps *= 10
    raise ValueError("whitening: the calibration Gram matrix is not positive definite even with damping")


def spectrum(w: Tensor, row: Tensor | None = None, col: Tensor | None = None, S: Tensor | None = None) -> Tensor:
    """Singular values of the weighted matrix diag(row) W diag(col) S (descending)."""
    return torch.linalg.svdvals(_weighted(w, row, col, S))


def _weighted(w: Tensor, row, col, S) -> Tensor:
    m = w.double()
    if row is not None:
        m = row.double()[:, None] * m
    if col is not None:
        m = m * col.double()[None, :]
    if S is not None:
        m = m @ S.double()
    return m


def factorize(w: Tensor, rank: int, row: Tensor | None = None, col: Tensor | None = None,
              S: Tensor | None = None) -> Factors:
    """Best rank-`rank` a @ b of W under the weighting diag(row) . diag(col) S (each optional):
    the truncated SVD of the weighted matrix, the weighting undone on the factors. The singular
    values are split evenly between a and b (sqrt on each side), so both factors have like
    ranges (what a later quantization step wants)."""
    out_f, in_f = w.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank {rank} for a {out_f} x {in_f} weight; accepted: 1..{min(out_f, in_f)}")
    m = _weighted(w, row, col, S)
    U, s, Vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    a = U[:, :rank] * root[None, :]
    b = root[:, None] * Vh[:rank]
    if S is not None:  # b S^-1: solve x S = b for x
        b = torch.linalg.solve_triangular(S.double(), b, upper=False, left=False)
    if col is not None:
        b = b / col.double()[None, :]
    if row is not None:
        a = a / row.double()[:, None]
    return Factors(a.to(w.dtype), b.to(w.dtype), float(s[rank:].pow(2).sum()), float(s.pow(2).sum()))


def shared_basis(ws: list[Tensor], rank: int, S: Tensor | None = None) -> tuple[Tensor, list[Tensor], float, float]:
    """Basis Sharing (Wang et al., ICLR 2025): the weights W_i (out x in) of several layers,
    stacked on their output rows, share one basis b (r x in) and keep their own coefficients
    a_i (out x r), W_i ~= a_i @ b; S whitens as in SVD-LLM (from the layers' summed Gram
    matrices). Returns (b, [a_i], dropped, energy)."""
    stacked = torch.cat([w.double() for w in ws], 0)
    f = factorize(stacked, rank, S=S)
    sizes = [w.shape[0] for w in ws]
    return f.b.to(ws[0].dtype), [a.to(ws[0].dtype) for a in torch.split(f.a, sizes, 0)], f.dropped, f.energy


def activation_scale(abs_mean: Tensor, alpha: float = 0.5) -> Tensor:
    """ASVD's input-channel scaling: (mean |x_j|)^alpha, normalised to mean 1 and kept away from 0."""
    s = abs_mean.double().clamp_min(1e-8).pow(alpha)
    return (s / s.mean()).clamp_min(1e-4)


def uniform_ranks(shapes: list[tuple[int, int]], ratio: float) -> list[int]:
    """The rank of each (out, in) layer keeping `ratio` of its own parameters: floor(ratio * out
    * in / (out + in)), at least 1. ratio 1 keeps every layer dense (rank 0)."""
    if ratio >= 1.0:
        return [0] * len(shapes)
    return [max(1, int(ratio * o * i / (o + i))) for o, i in shapes]


def ranks_from_spectra(shapes: list[tuple[int, int]], spectra: list[Tensor], ratio: float) -> list[int]:
    """Ranks meeting the budget `ratio` x (the layers' parameters), chosen globally: every
    singular value of every (weighted) layer is a candidate, worth the share of its layer's
    energy it carries (s_i^2 / sum s^2) and costing out + in parameters; the most valuable are
    kept until the budget is spent. Each layer keeps at least rank 1 and at most its break-even
    rank. ratio 1 keeps every layer dense (rank 0)."""
    if ratio >= 1.0:
        return [0] * len(shapes)
    budget = ratio * sum(o * i for o, i in shapes)
    ranks = [1] * len(shapes)
    spent = sum(o + i for o, i in shapes)
    cands = []
    for li, ((o, i), s) in enumerate(zip(shapes, spectra)):
        e = s.double().pow(2)
        share = e / e.sum().clamp_min(1e-30)
        cap = break_even_rank(o, i)
        for k in range(1, min(cap, len(share))):
            cands.append((float(share[k]), li))
    cands.sort(key=lambda t: -t[0])
    for _, li in cands:
        o, i = shapes[li]
        if spent + o + i > budget:
            continue
        ranks[li] += 1
        spent += o + i
    return ranks


def kept_fraction(shapes: list[tuple[int, int]], ranks: list[int]) -> float:
    """Fraction of the layers' parameters a set of ranks keeps (rank 0: the layer stays dense)."""
    total = sum(o * i for o, i in shapes)
    kept = sum(o * i if r == 0 else r * (o + i) for (o, i), r in zip(shapes, ranks))
    return kept / total if total else 1.0


def shared_rank(out_f: int, in_f: int, n: int, ratio: float) -> int:
    """The rank of a basis shared by n layers of (out, in) weights keeping `ratio` of their
    n * out * in parameters: r (in + n out) <= ratio n out in."""
    return max(1, math.floor(ratio * n * out_f * in_f / (in_f + n * out_f)))
