"""GPTQ on tensors (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"), following the reference implementation in
IST-DASLab/gptq and AutoGPTQ:

* H = 2/n sum x x^T over calibration rows (HessianAccumulator, running average, float32);
* dead inputs (diag(H) == 0): diag set to 1 and the weight columns zeroed;
* damping: H += percdamp * mean(diag(H)) * I (retried x10 if Cholesky fails);
* upper Cholesky factor of H^-1, lazy batch updates of `block_size` columns; computed in float64
  up to 8192 inputs and in float32 above (as the reference implementations do throughout), in
  place on one working copy of H: an 8B's 14,336-wide down projection needs 0.8 GB per copy;
* act_order: columns processed by descending diag(H), codes un-permuted at the end.

Groups: without act_order, the params of each group are computed on the fly at its first
column, from the group's *current* (error-compensated) weights - like AutoGPTQ, but including
the pending in-block updates. With act_order and groups we use AutoGPTQ's "static groups":
params of each contiguous group of original columns are computed before quantization. Both
keep contiguous groups in the original column order, so the result is stored exactly in
qmath.quantize_groupwise's format (uint8 codes, scales/zeros (out, in // group_size)) and
`dequantize_groupwise(q, scales, zeros)` reproduces the weight GPTQ committed to bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.activations import HessianAccumulator  # noqa: F401  (shared with pruning; was defined here)
from ..core.hardware import one_thread
from ..core.hessian import inverse_hessian_cholesky, quadratic_error, working_copy  # noqa: F401 (quadratic_error re-exported)
from ..core.qmath import dequantize_groupwise, group_qparams, quantize_codes, resolve_group_size



@dataclass
class GPTQResult:
    q: Tensor  # (out, in) uint8 codes in [0, 2^bits - 1], original column order
    scales: Tensor  # (out, n_groups) float32
    zeros: Tensor  # (out, n_groups) uint8, float32 with float_zero
    g_idx: Tensor  # (in,) int64 column -> group (always j // group_size: groups are contiguous)
    perm: Tensor | None  # (in,) int64 act_order processing order (informative), None without
    weight: Tensor  # (out, in) float32: the quantized weight GPTQ committed to
    error: float  # GPTQ's proxy loss: sum (w - q)^2 / (2 [H^-1]_jj^2)

    def dequantize(self) -> Tensor:
        return dequantize_groupwise(self.q, self.scales, self.zeros, self.g_idx)


def gptq_quantize(
    weight: Tensor,
    H: Tensor,
    bits: int = 4,
    group_size: int | None = 128,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    symmetric: bool = False,
    clip: bool = False,
    float_zero: bool = False,
) -> GPTQResult:
    """GPTQ-quantize weight (out, in) given the input Hessian H (in, in). group_size None/-1
    means one group per row; a size that does not divide in leaves a shorter last group.
    float_zero: group grids span exactly [min, max] with fractional zero points (float32 zeros
    in the result; see qmath.group_qparams)."""
    if weight.dim() != 2 or H.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"GPTQ needs weight (out, in) and H (in, in); got {tuple(weight.shape)} and {tuple(H.shape)}")
    if not torch.isfinite(H).all():
        raise ValueError("GPTQ: the Hessian contains NaN/inf; check calibration activations")
    if damp <= 0 or block_size <= 0:
        raise ValueError(f"GPTQ needs damp > 0 and block_size > 0, got damp={damp}, block_size={block_size}")
    out_f, n_cols = weight.shape
    gs = resolve_group_size(n_cols, group_size)
    maxq = 2**bits - 1
    device = weight.device

    H = H.detach().to(device)
    dead = torch.diag(H) == 0  # dead inputs: diag 1 in the factored copy, weight columns zeroed
    W = weight.detach().to(torch.float32)  # (out, in): copied below (act_order: in processing order)

    n_groups = -(-n_cols // gs)
    scales = torch.zeros(out_f, n_groups, dtype=torch.float32, device=device)
    zeros = torch.zeros(out_f, n_groups, dtype=torch.float32, device=device)
    static = act_order or gs == n_cols  # group params fixed before quantization
    if static:
        for g in range(n_groups):
            Wg = W[:, g * gs : (g + 1) * gs].masked_fill(dead[g * gs : (g + 1) * gs], 0.0)
            scales[:, g], zeros[:, g] = group_qparams(Wg, bits, symmetric, clip, float_zero)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H).masked_fill(dead, 1.0), descending=True)
        W = W[:, perm]  # the copy
        W[:, dead[perm]] = 0.0
    else:
        W = W.clone()
        W[:, dead] = 0.0
    col_group = (perm if perm is not None else torch.arange(n_cols, device=device)) // gs  # (in,)

    Hinv = inverse_hessian_cholesky(lambda: working_copy(H, dead, perm), damp).float()  # (in, in) upper
    Q = torch.zeros_like(W)  # (out, in) quantized weight, processing order
    codes = torch.zeros(out_f, n_cols, dtype=torch.uint8, device=device)  # processing order
    loss = torch.zeros((), dtype=torch.float64, device=device)  # GPTQ's proxy loss, summed block by block

    for i1 in range(0, n_cols, block_size):
        i2 = min(i1 + block_size, n_cols)
        W1 = W[:, i1:i2].clone()  # (out, B) block, updated column by column
        Err1 = torch.zeros_like(W1)  # (out, B) scaled errors
        Loss1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]  # (B, B)
        for i in range(i2 - i1):
            col = i1 + i
            g = int(col_group[col])
            if not static and col % gs == 0:  # first column of a group: params on current weights
                end = min(col + gs, n_cols)
                seg = W1[:, i : end - i1]
                if end > i2:  # group spills past the block: add its pending in-block updates
                    rest = W[:, i2:end] - Err1 @ Hinv[i1:i2, i2:end]
                    seg = torch.cat([seg, rest], 1)
                scales[:, g], zeros[:, g] = group_qparams(seg, bits, symmetric, clip, float_zero)
            w, d = W1[:, i], Hinv1[i, i]  # (out,), scalar
            c = quantize_codes(w, scales[:, g], zeros[:, g], maxq)  # (out,)
            q = (c - zeros[:, g]) * scales[:, g]  # same arithmetic as dequantize_groupwise
            codes[:, col], Q[:, col] = c, q  # codes are whole numbers in [0, maxq]: exact in uint8
            Loss1[:, i] = (w - q) ** 2 / d**2 / 2
            err = (w - q) / d  # (out,)
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the remaining columns
        loss += Loss1.sum(dtype=torch.float64)

    del W, Hinv
    if perm is not None:
        inv = torch.argsort(perm)
        codes, Q = codes[:, inv], Q[:, inv]
    g_idx = torch.arange(n_cols, device=device) // gs
    return GPTQResult(
        q=codes,
        scales=scales,
        zeros=zeros if float_zero else zeros.to(torch.uint8),
        g_idx=g_idx,
        perm=perm,
        weight=Q,
        error=float(loss),
    )


def refit_group_params(weight: Tensor, H: Tensor, q: Tensor, group_size: int, damp: float = 0.01
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Given fixed codes q (out, in), re-solve each row's group scales and (float) zero points to
    minimise the layer-output error (w - w_hat)^T H (w - w_hat), w_hat_j = (q_j - z_g) s_g.

    w_hat is linear in (s_g, b_g = -z_g s_g), so each row is a weighted least-squares problem with
    2 x n_groups unknowns, solved exactly (normal equations, H damped as in GPTQ).
    Returns (scales float32, zeros float32, ok (out,): the row's solution is finite with positive
    scales, H without damping, W) - H and W with dead inputs handled as in gptq_quantize.
    Cost ~ out * in^2 flops, like one W @ H. refit_gptq adds the per-row fallback."""
    out_f, n_cols = q.shape
    gs = resolve_group_size(n_cols, group_size)
    n_groups = -(-n_cols // gs)
    H = H.detach().to(q.device)
    dead = torch.diag(H) == 0
    H0 = working_copy(H, dead)  # (in, in) undamped, dead inputs' diagonal 1, in the factor dtype: the one copy
    dt = H0.dtype
    W = weight.detach().to(torch.float32, copy=True)
    W[:, dead] = 0.0
    lam = damp * torch.diag(H0).mean()  # H_d = H0 + lam I, never built: its products are H0's plus lam x
    g_of = torch.arange(n_cols, device=q.device) // gs

    def group_sum(X: Tensor) -> Tensor:  # (c, in) -> (c, G): sums over each group's columns
        return torch.zeros(X.shape[0], n_groups, dtype=X.dtype, device=X.device).index_add_(1, g_of, X)

    HE = group_sum(H0)  # (in, G): sum_{k in h} H0_jk
    HE[torch.arange(n_cols, device=q.device), g_of] += lam
    M_bb = group_sum(HE.T.contiguous()).double()  # (G, G)
    # each row is its own least-squares problem: rows in chunks so that M (rows, 2G, 2G) float64 and one
    # (rows, in) product stay near 64 MB each
    chunk = max(1, min((64 << 20) // (8 * 4 * n_groups * n_groups), (64 << 20) // (dt.itemsize * n_cols)))
    theta = torch.empty(out_f, 2 * n_groups, dtype=torch.float64, device=q.device)
    eye = torch.eye(2 * n_groups, dtype=torch.float64, device=q.device)
    for r0 in range(0, out_f, chunk):
        U = q[r0:r0 + chunk].to(dt)  # (c, in) codes
        Wc = W[r0:r0 + chunk].to(dt)
        c = U.shape[0]
        HW = Wc @ H0 + lam * Wc  # (c, in): H_d w per row
        M_aa = torch.empty(c, n_groups, n_groups, dtype=torch.float64, device=q.device)
        M_ab = torch.empty(c, n_groups, n_groups, dtype=torch.float64, device=q.device)
        for g in range(n_groups):  # M_aa[r, g, h] = sum_{j in g, k in h} u_j H_d,jk u_k
            sl = slice(g * gs, min((g + 1) * gs, n_cols))
            T = U[:, sl] @ H0[sl, :]  # (c, in)
            T[:, sl] += lam * U[:, sl]
            M_aa[:, g, :] = group_sum(T * U).double()
            M_ab[:, g, :] = (U[:, sl] @ HE[sl, :]).double()  # sum_{j in g} u_j sum_{k in h} H_d,jk
        M = torch.cat([torch.cat([M_aa, M_ab], 2), torch.cat([M_ab.transpose(1, 2), M_bb.expand(c, -1, -1)], 2)], 1)
        del M_aa, M_ab
        rhs = torch.cat([group_sum(U * HW), group_sum(HW)], 1).double()  # (c, 2G)
        ridge = 1e-10 * M.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
        M += ridge[:, None, None] * eye
        with one_thread():  # many small solves: see core.hardware.one_thread
            theta[r0:r0 + chunk] = torch.linalg.solve(M, rhs.unsqueeze(-1)).squeeze(-1)  # (c, 2G)
    a, b = theta[:, :n_groups], theta[:, n_groups:]
    scales = a.float()
    zeros = (-b / a).float()
    ok = torch.isfinite(scales).all(1) & torch.isfinite(zeros).all(1) & (a > 0).all(1)
    return scales, zeros, ok, H0, W


def refit_gptq(weight: Tensor, H: Tensor, q: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
               damp: float = 0.01) -> tuple[Tensor, Tensor, dict]:
    """refit_group_params, keeping `scales`/`zeros` (the GPTQ ones) on rows where the refit is
    degenerate or does not lower the undamped output error. Returns float32 scales, float32
    zeros and {"rows_refit", "rows", "error_before", "error_after"}."""
    s_new, z_new, ok, H0, W = refit_group_params(weight, H, q, group_size, damp)
    gs = resolve_group_size(q.shape[1], group_size)
    g_idx = torch.arange(q.shape[1], device=q.device) // gs
    s_try = torch.where(ok[:, None], s_new, scales.float())
    z_try = torch.where(ok[:, None], z_new, zeros.float())
    before = torch.empty(q.shape[0], dtype=torch.float64, device=q.device)
    after = torch.empty_like(before)
    rows = max(1, (64 << 20) // (4 * q.shape[1]))  # dequantized a row chunk at a time
    for r0 in range(0, q.shape[0], rows):
        r = slice(r0, r0 + rows)
        before[r] = quadratic_error(W[r], dequantize_groupwise(q[r], scales[r], zeros[r], g_idx), H0)
        after[r] = quadratic_error(W[r], dequantize_groupwise(q[r], s_try[r], z_try[r], g_idx), H0)
    keep_new = ok & (after <= before)
    s_out = torch.where(keep_new[:, None], s_new, scales.float())
    z_out = torch.where(keep_new[:, None], z_new, zeros.float())
    final = torch.where(keep_new, after, before)
    return s_out, z_out, {"rows_refit": int(keep_new.sum()), "rows": int(q.shape[0]),
                          "error_before": float(before.sum()), "error_after": float(final.sum())}


def coordinate_descent(weight: Tensor, H: Tensor, q: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                       bits: int, damp: float = 0.01, passes: int = 1, block_size: int = 128
                       ) -> tuple[Tensor, dict]:
    """Cyclic coordinate descent on the codes (QuantEase, Behdin et al. 2023), on a fixed grid.

    Minimises each row's damped layer-output error e^T H_d e, e = w - w_hat, one column at a time:
    the best w_hat_j with the other columns fixed is w_hat_j + (e H_d)_j / H_d,jj, rounded to the
    group's grid (the error is a 1-D convex quadratic in w_hat_j, so the nearest grid point is the
    best one and no step raises the error). Starts from GPTQ's codes: GPTQ visits each column
    once and never revisits the earlier ones; a pass here lets every column react to all the
    others. Cost per pass ~ 2 out in^2 flops, about one GPTQ.
    Returns (uint8 codes, {"error_before", "error_after"}) on the undamped H."""
    out_f, n_cols = q.shape
    gs = resolve_group_size(n_cols, group_size)
    maxq = 2**bits - 1
    H = H.detach().to(q.device)
    dead = torch.diag(H) == 0
    W = weight.detach().to(torch.float32, copy=True)
    W[:, dead] = 0.0
    Hd32 = working_copy(H, dead).float()  # one copy (float32 here: the sweep's arithmetic)
    lam = damp * torch.diag(Hd32).mean()
    Hd32.diagonal().add_(lam)
    g_idx = torch.arange(n_cols, device=q.device) // gs
    S = scales.float()[:, g_idx]
    Z = zeros.float()[:, g_idx]
    codes = q.float().clone()
    What = (codes - Z) * S
    d = torch.diag(Hd32)
    G = (W - What) @ Hd32  # (out, in): (e H_d) for every row

    def error() -> float:  # e^T H e = e^T H_d e - lam |e|^2, from G (no extra pass over H)
        E = (W - What).double()
        return float((E * G.double()).sum() - lam * E.pow(2).sum())

    before = error()
    for _ in range(passes):
        for i1 in range(0, n_cols, block_size):
            i2 = min(i1 + block_size, n_cols)
            Gb = G[:, i1:i2].clone()
            Hb = Hd32[i1:i2, i1:i2]
            dE = torch.zeros(out_f, i2 - i1, dtype=torch.float32, device=q.device)
            for j in range(i2 - i1):
                col = i1 + j
                c = quantize_codes(What[:, col] + Gb[:, j] / d[col], S[:, col], Z[:, col], maxq)
                new = (c - Z[:, col]) * S[:, col]
                de = What[:, col] - new  # change of e_col
                codes[:, col], What[:, col] = c, new
                dE[:, j] = de
                Gb[:, j:] += de[:, None] * Hb[j, j:][None, :]
            G += dE @ Hd32[i1:i2, :]
    return codes.to(torch.uint8), {"error_before": before, "error_after": error()}
