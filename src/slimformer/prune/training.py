"""Training-time pruning: callbacks of the shared trainer (slimformer.train).

    cb = GradualMagnitude(sm, final=0.8, start=0, end=1000, every=50)     # cubic schedule (Zhu & Gupta 2017)
    cb = MovementPruning(sm, final=0.8, start=0, end=1000, every=50)     # scores -W * dL/dW (Sanh et al. 2020)
    cb = GroupLasso(sm, weight=1e-3)                                     # heads and FFN neurons pushed to zero
    Trainer(..., callbacks=[cb]).fit(); cb.finalize()

Masks stay applied through optimizer steps: after every step the pruned weights are set to zero
again (AdamW's moments or weight decay cannot revive them). `finalize()` stores the sparse layers
compactly (SparseLinear) or, for GroupLasso, removes the heads / neurons whose weights went to zero.
"""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import get_adapter
from ..adapters.base import linear_weight
from ..core.errors import ConfigError
from ..models.surgery import layer_linears, remove_ffn_neurons_, remove_heads_
from ..train import Callback
from .masks import mask_layer
from .sparsity import _swap


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3, clamped to [t0, t1]."""
    if step <= start:
        return initial
    if step >= end:
        return final
    p = (step - start) / max(1, end - start)
    return final + (initial - final) * (1 - p) ** 3


class _Scheduled(Callback):
    """A cubic sparsity schedule from `start` to `end`: optimizer steps (int), or fractions of the
    trainer's steps (float), resolved when training starts."""

    def _set_schedule(self, final: float, start, end, every: int) -> None:
        if not 0 <= final < 1:
            raise ConfigError(f"final sparsity={final!r} is out of range; accepted: [0, 1)")
        if not 0 <= start < end:
            raise ConfigError(f"start={start}, end={end}: need 0 <= start < end")
        self.final, self.start, self.end, self.every = final, start, end, max(1, every)
        self._fractions = isinstance(start, float) or isinstance(end, float)
        if self._fractions and end > 1:
            raise ConfigError(f"start={start}, end={end}: fractions of the training steps must be in [0, 1]")

    def _steps(self, trainer) -> tuple[int, int]:
        if not self._fractions:
            return self.start, self.end
        total = trainer.total_steps
        s0 = int(round(self.start * total))
        return s0, max(s0 + 1, int(round(self.end * total)))

    def _due(self, trainer, step: int) -> tuple[bool, float]:
        """(update the masks at this step?, the scheduled sparsity)."""
        s0, s1 = self._steps(trainer)
        due = s0 <= step <= s1 and ((step - s0) % self.every == 0 or step == s1)
        return due, cubic_sparsity(step, self.final, s0, s1)


class _MaskedTraining(_Scheduled):
    def __init__(self, sm, final: float, start, end, every: int = 50, targets=None):
        self._set_schedule(final, start, end, every)
        self.sm = sm
        self.layers = dict(targets) if targets is not None else dict(layer_linears(sm.model))
        bad = [n for n, m in self.layers.items() if not isinstance(m, nn.Linear)]
        if bad:
            raise ConfigError(f"training-time pruning needs nn.Linear layers; {bad[0]} is not one")
        self.masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()}

    def scores(self, name: str, mod: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def on_step_end(self, trainer, step: int) -> None:
        due, s = self._due(trainer, step)
        if due:
            for n, m in self.layers.items():
                self.masks[n] = mask_layer(self.scores(n, m), s)
        self.apply()

    def state_dict(self) -> dict:
        return {"masks": self.masks, "acc": getattr(self, "acc", None)}

    def load_state_dict(self, state: dict) -> None:
        self.masks = state["masks"]
        if state.get("acc") is not None:
            self.acc = state["acc"]

    @torch.no_grad()
    def apply(self) -> None:
        for n, m in self.layers.items():
            m.weight.mul_(self.masks[n].to(m.weight.dtype))

    def finalize(self) -> dict:
        """Store every masked layer compactly (SparseLinear) and return per-layer sparsity."""
        self.apply()
        out = {}
        for n, m in self.layers.items():
            out[n] = _swap(self.sm, n, m, linear_weight(m).float(), self.masks[n])
        return out


class GradualMagnitude(_MaskedTraining):
    """Gradual magnitude pruning on a cubic schedule: every `every` steps between start and end,
    the smallest |W| of each layer up to the scheduled sparsity are masked."""

    def scores(self, name, mod):
        return mod.weight.detach().abs()


class MovementPruning(_MaskedTraining):
    """Movement pruning (Sanh et al. 2020): scores accumulate -W * dL/dW over training, so weights
    moving towards zero are pruned, whatever their size; the cubic schedule sets how many."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.acc = {n: torch.zeros_like(m.weight) for n, m in self.layers.items()}

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, step: int) -> None:
        for n, m in self.layers.items():
            if m.weight.grad is not None:
                self.acc[n] -= m.weight.detach() * m.weight.grad

    def scores(self, name, mod):
        return self.acc[name].float()


class GroupLasso(Callback):
    """Group lasso on attention units and FFN neurons: each step adds weight * w_g / ||w_g|| to the
    gradient of every group (the q/k/v rows and o columns of a head; the up/gate rows and down
    column of a neuron), driving whole groups to zero; `finalize(threshold)` removes the groups
    whose norm fell below threshold x the median group norm of their layer."""

    def __init__(self, sm, weight: float = 1e-3, heads: bool = True, ffn: bool = True, threshold: float = 0.05):
        if not weight > 0:
            raise ConfigError(f"GroupLasso weight={weight!r}; accepted: a number > 0")
        self.sm, self.weight, self.heads, self.ffn, self.threshold = sm, weight, heads, ffn, threshold

    def _groups(self):
        for i, li in enumerate(get_adapter(self.sm.model).layers(self.sm.model)):
            if self.ffn:
                f = li.ffn
                rows = [m for m in (f.up, f.gate) if m is not None]
                yield "ffn", i, rows, f.down, li.ffn.intermediate_size, 1
            if self.heads:
                a = li.attention
                if a.qkv is None and all(isinstance(m, nn.Linear) for m in (a.q, a.k, a.v, a.o)):
                    yield "heads", i, (a.q, a.k, a.v), a.o, a.num_kv_heads, a.head_dim * (a.num_heads // a.num_kv_heads)

    def group_norms(self) -> dict:
        out = {}
        for kind, i, rows, col, n, width in self._groups():
            out[(kind, i)] = self._norms(kind, rows, col, n, width)
        return out

    @staticmethod
    def _norms(kind, rows, col, n, width):
        if kind == "ffn":
            s = sum(m.weight.detach().pow(2).sum(1) for m in rows) + col.weight.detach().pow(2).sum(0)
            return s.sqrt()
        q, k, v = rows
        kvw = k.weight.shape[0] // n
        s = q.weight.detach().pow(2).sum(1).reshape(n, width).sum(1)
        s = s + k.weight.detach().pow(2).sum(1).reshape(n, kvw).sum(1) + v.weight.detach().pow(2).sum(1).reshape(n, kvw).sum(1)
        s = s + col.weight.detach().pow(2).sum(0).reshape(n, width).sum(1)
        return s.sqrt()

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, step: int) -> None:
        for kind, i, rows, col, n, width in self._groups():
            norms = self._norms(kind, rows, col, n, width).clamp_min(1e-8)
            if kind == "ffn":
                for m in rows:
                    if m.weight.grad is not None:
                        m.weight.grad += self.weight * m.weight / norms[:, None]
                if col.weight.grad is not None:
                    col.weight.grad += self.weight * col.weight / norms[None, :]
            else:
                q, k, v = rows
                rep_q = norms.repeat_interleave(width)
                rep_kv = norms.repeat_interleave(k.weight.shape[0] // n)
                for m, rep in ((q, rep_q), (k, rep_kv), (v, rep_kv)):
                    if m.weight.grad is not None:
                        m.weight.grad += self.weight * m.weight / rep[:, None]
                if col.weight.grad is not None:
                    col.weight.grad += self.weight * col.weight / rep_q[None, :]

    def finalize(self, threshold: float | None = None) -> dict:
        """Remove the groups whose norm is below threshold x their layer's median group norm."""
        threshold = self.threshold if threshold is None else threshold
        heads, keep, removed = {}, {}, {"heads": {}, "ffn": {}}
        for (kind, i), norms in self.group_norms().items():
            small = (norms < threshold * norms.median()).nonzero().flatten().tolist()
            if kind == "ffn" and small and len(small) < len(norms):
                keep[i] = [j for j in range(len(norms)) if j not in set(small)]
                removed["ffn"][i] = len(small)
            elif kind == "heads" and small and len(small) < len(norms):
                heads[i] = small
                removed["heads"][i] = len(small)
        remove_heads_(self.sm.model, heads)
        remove_ffn_neurons_(self.sm.model, keep)
        return removed
