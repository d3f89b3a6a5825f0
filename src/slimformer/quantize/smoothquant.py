"""SmoothQuant (Xiao et al. 2022) as pure functions: migrate activation outliers into the
weights with a per-input-channel scale s, since X W^T = (X / s) (W * s)^T.

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

where max|W_j| is taken over every linear layer that reads the same input (pass the max over
them, see `weight_absmax`). The division X / s is usually folded into the preceding LayerNorm
(`fold_into_norm`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def weight_absmax(*weights: Tensor) -> Tensor:
    """Per-input-channel max|W| over linear weights (out_i, in) sharing one input -> (in,)."""
    if not weights:
        raise ValueError("weight_absmax needs at least one weight")
    return torch.stack([w.detach().abs().float().amax(dim=0) for w in weights]).amax(dim=0)


def smoothing_scales(act_absmax: Tensor, weight_absmax: Tensor, alpha: float = 0.5, eps: float = 1e-5) -> Tensor:
    """s (in,) float32. Both statistics are clamped to >= eps (so dead channels give a finite s)
    and s to [eps, 1/eps]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if act_absmax.shape != weight_absmax.shape or act_absmax.dim() != 1:
        raise ValueError(
            f"act_absmax and weight_absmax must both be (in,), got {tuple(act_absmax.shape)} and {tuple(weight_absmax.shape)}"
        )
    a = act_absmax.detach().float().abs().clamp_min(eps)
    w = weight_absmax.detach().float().to(a.device).abs().clamp_min(eps)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    if not torch.isfinite(s).all():
        raise ValueError("smoothing_scales: activation or weight statistics contain NaN/inf")
    return s.clamp(eps, 1.0 / eps)


def apply_smoothing(weight: Tensor, s: Tensor) -> Tensor:
    """W (out, in) -> W * s along the input dim (new tensor, W's dtype)."""
    return (weight.float() * s.to(weight.device)).to(weight.dtype)


def smooth_activation(x: Tensor, s: Tensor) -> Tensor:
    """x (..., in) -> x / s (new tensor, x's dtype)."""
    return (x.float() / s.to(x.device)).to(x.dtype)


def fold_into_norm(norm_weight: Tensor, norm_bias: Tensor | None, s: Tensor) -> tuple[Tensor, Tensor | None]:
    """Fold x / s into a preceding LayerNorm/RMSNorm: (gamma / s, beta / s)."""
    s = s.to(norm_weight.device)
    w = (norm_weight.float() / s).to(norm_weight.dtype)
    b = None if norm_bias is None else (norm_bias.float() / s).to(norm_bias.dtype)
    return w, b


def floor_absmax(amax: torch.Tensor, q: float | None) -> torch.Tensor:
    """max(amax, quantile_q(amax)). Calibration sees few texts: a channel that stayed small there
    (an FFN neuron that rarely fires) would get a small s and be *amplified* on other text,
    becoming a new outlier. Flooring keeps s flat below the quantile."""
    if q is None:
        return amax
    amax = amax.float()
    return amax.clamp_min(torch.quantile(amax, q))
