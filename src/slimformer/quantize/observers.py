"""Observers: pick (scale, zero_point) for a tensor. A string-keyed registry of callables that
share one signature:

    observer(x, *, bits=8, symmetric=True, axis=None, **opts) -> (scale, zero_point)

axis=None is per-tensor (0-dim scale/zp); axis=k is per-channel along dim k ((C,) scale/zp).
scale is float32, zero_point int32 (0 when symmetric); conventions as in qmath.

Built in: "minmax", "percentile" (opt `percentile`, default 99.99), "mse" (opts `grid`=100,
`min_ratio`=0.01: `grid` geometrically spaced clipping ratios in [min_ratio, 1]; the one with
the lowest quantization MSE wins, per channel).

`RunningObserver` is the streaming form for calibration over many batches: "minmax" keeps
running min/max (exact); any other observer keeps a uniform reservoir sample of at most
`max_samples` (default 2**20) values per channel (per-tensor: 2**20 values in all) and runs
the one-shot observer on it in `compute()`. Up to `max_samples` values it is exact.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from slimformer.core.registry import Registry

from ..core.qmath import dequantize, qparams_from_minmax, quantize

Observer = Callable[..., tuple[Tensor, Tensor]]
OBSERVERS: Registry[Observer] = Registry("observer")


def get_observer(name: str) -> Observer:
    return OBSERVERS.get(name)


def _channels(x: Tensor, axis: int | None) -> Tensor:
    """x -> (C, N): one row per channel along `axis` (C=1 for per-tensor)."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _finish(scale: Tensor, zp: Tensor, axis: int | None) -> tuple[Tensor, Tensor]:
    return (scale.reshape(()), zp.reshape(())) if axis is None else (scale, zp)


def _kth(x: Tensor, q: float) -> Tensor:
    """Per-row q-quantile (q in [0, 1], nearest rank) of x (C, N) -> (C,)."""
    n = x.shape[1]
    k = min(max(int(round(q * (n - 1))) + 1, 1), n)
    return x.kthvalue(k, dim=1).values


@OBSERVERS.register("minmax")
def minmax_observer(x: Tensor, *, bits: int = 8, symmetric: bool = True, axis: int | None = None, **opts):
    xc = _channels(x, axis)  # (C, N)
    scale, zp = qparams_from_minmax(xc.amin(1), xc.amax(1), bits, symmetric)
    return _finish(scale, zp, axis)


@OBSERVERS.register("percentile")
def percentile_observer(
    x: Tensor, *, bits: int = 8, symmetric: bool = True, axis: int | None = None, percentile: float = 99.99, **opts
):
    """Clip at the `percentile` of |x| (symmetric) or at the (100-p, p) percentiles of x."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    xc = _channels(x, axis)  # (C, N)
    p = percentile / 100.0
    if symmetric:
        hi = _kth(xc.abs(), p)
        lo = -hi
    else:
        lo, hi = _kth(xc, 1.0 - p), _kth(xc, p)
    scale, zp = qparams_from_minmax(lo, hi, bits, symmetric)
    return _finish(scale, zp, axis)


@OBSERVERS.register("mse")
def mse_observer(
    x: Tensor,
    *,
    bits: int = 8,
    symmetric: bool = True,
    axis: int | None = None,
    grid: int = 100,
    min_ratio: float = 0.01,
    **opts,
):
    """Shrink the min/max range by `grid` ratios from 1 down to min_ratio (geometric steps, so
    heavy tails that want a small ratio get a fine search too) and keep, per channel, the one
    with the lowest mean squared quantization error."""
    if not 0.0 < min_ratio <= 1.0 or grid < 1:
        raise ValueError(f"mse observer needs 0 < min_ratio <= 1 and grid >= 1, got {min_ratio}, {grid}")
    xc = _channels(x, axis)  # (C, N)
    xmin, xmax = xc.amin(1), xc.amax(1)  # (C,)
    best_err = torch.full_like(xmin, float("inf"))
    best_scale, best_zp = qparams_from_minmax(xmin, xmax, bits, symmetric)
    for ratio in torch.logspace(0.0, math.log10(min_ratio), grid).tolist():
        scale, zp = qparams_from_minmax(xmin * ratio, xmax * ratio, bits, symmetric)
        xq = dequantize(quantize(xc, scale, zp, bits, symmetric, axis=0), scale, zp, axis=0)
        err = (xq - xc).pow(2).mean(1)  # (C,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zp = torch.where(better, zp, best_zp)
    return _finish(best_scale, best_zp, axis)


class RunningObserver:
    """Streaming observer: `.update(x)` per calibration batch, then `.compute()`.

    Channels (for per-channel `axis`) must keep the same count across batches. The reservoir
    costs C * max_samples * 4 bytes (C channels): lower `max_samples` for wide per-channel use."""

    def __init__(
        self,
        name: str = "minmax",
        bits: int = 8,
        symmetric: bool = True,
        axis: int | None = None,
        *,
        max_samples: int = 2**20,
        seed: int = 0,
        **opts,
    ):
        self.fn = get_observer(name)
        self.name, self.bits, self.symmetric, self.axis, self.opts = name.lower(), bits, symmetric, axis, opts
        self.max_samples = int(max_samples)
        self.seen = 0  # values seen per channel
        self.min: Tensor | None = None  # (C,) running min   (minmax)
        self.max: Tensor | None = None  # (C,) running max   (minmax)
        self.reservoir: Tensor | None = None  # (C, <= max_samples) (other observers)
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor) -> None:
        xc = _channels(x, self.axis).cpu()  # (C, N)
        if xc.shape[1] == 0:
            return
        if self.name == "minmax":
            mn, mx = xc.amin(1), xc.amax(1)
            self.min = mn if self.min is None else torch.minimum(self.min, mn)
            self.max = mx if self.max is None else torch.maximum(self.max, mx)
        else:
            self._reservoir_add(xc)
        self.seen += xc.shape[1]

    def _reservoir_add(self, xc: Tensor) -> None:
        """Algorithm R, vectorised; the same positions are sampled for every channel."""
        k = self.max_samples
        res = xc[:, :0] if self.reservoir is None else self.reservoir
        room = k - res.shape[1]
        if room > 0:  # still filling: keep everything that fits
            res, xc = torch.cat([res, xc[:, :room]], 1), xc[:, room:]
        n = xc.shape[1]
        if n:
            # item j (global index t_j) picks slot r_j ~ U[0, t_j]; kept when r_j < k
            t = torch.arange(n) + self.seen + max(room, 0)  # global 0-based index of each item
            r = (torch.rand(n, generator=self._gen, dtype=torch.float64) * (t + 1)).long()
            keep = r < k
            slots, items = r[keep], torch.arange(n)[keep]
            # later items win a shared slot, as in the sequential algorithm
            winner = torch.full((k,), -1, dtype=torch.long).scatter_reduce(0, slots, items, "amax")
            hit = winner >= 0
            res = res.clone()
            res[:, hit] = xc[:, winner[hit]]
        self.reservoir = res

    def compute(self) -> tuple[Tensor, Tensor]:
        if self.seen == 0:
            raise RuntimeError("RunningObserver.compute() called before any update()")
        if self.name == "minmax":
            scale, zp = qparams_from_minmax(self.min, self.max, self.bits, self.symmetric)
            return _finish(scale, zp, self.axis)
        axis = None if self.axis is None else 0
        return self.fn(self.reservoir, bits=self.bits, symmetric=self.symmetric, axis=axis, **self.opts)
