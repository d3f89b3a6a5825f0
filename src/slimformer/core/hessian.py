"""Hessian algebra shared by GPTQ (quantize/) and SparseGPT (prune/): the inverse Hessian's
Cholesky factor, factored in place on one working copy, in float64 where a copy is small and in
float32 where it is wide (an 8B's 14,336-wide down projection: 0.8 GB per float32 copy, 1.6 GB
per float64 one), and the layer-output error (w - w_hat)^T H (w - w_hat) computed row chunk by
row chunk."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

FLOAT64_MAX_INPUTS = 8192  # wider Hessians are factored in float32: 1.6 GB per float64 copy at 14,336


def factor_dtype(n_inputs: int) -> torch.dtype:
    """The dtype GPTQ factors an (n, n) Hessian in: float64 where a copy is small (n <= 8192),
    float32 above (as IST-DASLab/gptq and AutoGPTQ do for every layer)."""
    return torch.float64 if n_inputs <= FLOAT64_MAX_INPUTS else torch.float32


def working_copy(H: Tensor, dead: Tensor, perm: Tensor | None = None) -> Tensor:
    """A copy of H in its factor dtype, dead inputs' diagonal set to 1 (so it is invertible),
    rows and columns in `perm` order when given. Laid out column-major (LAPACK's order), so that
    inverse_hessian_cholesky factors it in place: a row-major matrix is copied by every LAPACK call."""
    n = H.shape[0]
    Hw = torch.empty_strided((n, n), (1, n), dtype=factor_dtype(n), device=H.device)
    if perm is None:
        Hw.copy_(H)
    else:  # a column chunk at a time (contiguous in column-major memory)
        cols = max(1, (64 << 20) // (n * H.element_size()))
        for c0 in range(0, n, cols):
            Hw[:, c0:c0 + cols] = H.index_select(1, perm[c0:c0 + cols]).index_select(0, perm)
    d = dead if perm is None else dead[perm]
    Hw[d, d] = 1.0
    return Hw


def inverse_hessian_cholesky(working_copy: Callable[[], Tensor], damp: float) -> Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1, retried with 10x damping (up to 5
    times) if H is not positive definite. `working_copy()` gives a fresh copy of H in the dtype to
    factor in (column-major: see working_copy); the factorization works in place on it (one
    (in, in) matrix alive, not four) and a retry asks for a new one."""
    info = None
    for attempt in range(6):
        H = working_copy()
        if info is None:
            info = torch.empty((), dtype=torch.int32, device=H.device)
        H.diagonal().add_((damp * 10**attempt) * torch.diag(H).mean())
        torch.linalg.cholesky_ex(H, out=(H, info))
        if info == 0:
            torch.cholesky_inverse(H, out=H)
            torch.linalg.cholesky_ex(H, upper=True, out=(H, info))
            if info == 0:
                return H
        del H
    raise ValueError(f"the calibration Hessian is not positive definite even with damp={damp * 1e5:g}; check the "
                     "calibration data")


def quadratic_error(weight: Tensor, approx: Tensor | None, H: Tensor, chunk_bytes: int = 64 << 20) -> Tensor:
    """Per-row (w - w_hat)^T H (w - w_hat): the layer-output error GPTQ minimises (out,), float64
    (approx None: w^T H w).
    Rows in chunks of about `chunk_bytes`, in GPTQ's factor dtype (H is not copied to float64
    where it is wide)."""
    dtype = factor_dtype(H.shape[0])
    Hc = H.to(dtype)
    out = torch.empty(weight.shape[0], dtype=torch.float64, device=weight.device)
    rows = max(1, chunk_bytes // (H.shape[0] * 8))
    for r0 in range(0, weight.shape[0], rows):
        D = weight[r0:r0 + rows].to(dtype)
        if approx is not None:
            D = D - approx[r0:r0 + rows].to(dtype)
        out[r0:r0 + rows] = ((D @ Hc) * D).sum(1, dtype=torch.float64)
    return out
