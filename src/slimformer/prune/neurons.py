"""FFN neurons pruned during training: a gate on each neuron's activation (the input of the FFN's
down projection) masks it on a cubic schedule, and after training the masked neurons are removed
physically (smaller, faster), which changes no output: a masked neuron contributed nothing.

Scores: "movement" (Sanh et al. 2020, for neurons): accumulate -dL/dg over training, g the gate of
the neuron (1 kept, 0 masked). The gate is a leaf tensor, so its gradient is the straight-through
estimate dL/dg = sum_tokens dL/dh * x even while the neuron is masked: a masked neuron whose
score recovers comes back before the schedule ends. "magnitude": the norm of the neuron's weights
(its up / gate rows and its down column), i.e. gradual magnitude pruning of neurons."""
from __future__ import annotations

import torch

from ..adapters import get_adapter
from ..adapters.base import linear_weight
from ..core.errors import ConfigError
from ..models.surgery import remove_ffn_neurons_
from .training import _Scheduled

SCORES = ("movement", "magnitude")


class NeuronMasking(_Scheduled):
    def __init__(self, sm, final: float, start, end, every: int = 50, score: str = "movement", scope: str = "layer"):
        if score not in SCORES:
            raise ConfigError(f"NeuronMasking score={score!r}; accepted: {', '.join(SCORES)}")
        if scope not in ("layer", "global"):
            raise ConfigError(f"NeuronMasking scope={scope!r}; accepted: layer, global")
        self._set_schedule(final, start, end, every)
        self.sm, self.score, self.scope = sm, score, scope
        self.ffns = [li.ffn for li in get_adapter(sm.model).layers(sm.model)]
        dev = next(sm.model.parameters()).device
        self.gates = [torch.ones(f.intermediate_size, device=dev, requires_grad=True) for f in self.ffns]
        self.movement = [torch.zeros(f.intermediate_size, device=dev) for f in self.ffns]
        self.hooks = [f.down.register_forward_pre_hook(self._gate(i)) for i, f in enumerate(self.ffns)]

    def _gate(self, i: int):
        def pre(_mod, args):
            x = args[0]
            return (x * self.gates[i].to(x.dtype),) + tuple(args[1:])
        return pre

    def masks(self) -> list[torch.Tensor]:
        return [g.detach() > 0 for g in self.gates]

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, step: int) -> None:
        for i, g in enumerate(self.gates):
            if g.grad is not None:
                self.movement[i] -= g.grad.float()
                g.grad = None

    def _scores(self) -> list[torch.Tensor]:
        if self.score == "movement":
            return [m.clone() for m in self.movement]
        out = []
        for f in self.ffns:
            s = sum(linear_weight(m).float().pow(2).sum(1) for m in (f.up, f.gate) if m is not None)
            out.append((s + linear_weight(f.down).float().pow(2).sum(0)).sqrt())
        return out

    @torch.no_grad()
    def on_step_end(self, trainer, step: int) -> None:
        due, sparsity = self._due(trainer, step)
        if not due:
            return
        scores = self._scores()
        if self.scope == "global":  # ranked over all layers, each layer keeping at least one neuron
            flat = torch.cat(scores)
            k = int(round(sparsity * flat.numel()))
            cut = flat.kthvalue(k).values if k > 0 else flat.min() - 1
            for g, s in zip(self.gates, scores):
                keep = s > cut
                if not keep.any():
                    keep[s.argmax()] = True
                g.copy_(keep.float())
            return
        for g, s in zip(self.gates, scores):
            k = min(int(round(sparsity * s.numel())), s.numel() - 1)
            keep = torch.ones_like(s, dtype=torch.bool)
            if k > 0:
                keep[s.topk(k, largest=False).indices] = False
            g.copy_(keep.float())

    def state_dict(self) -> dict:
        return {"gates": [g.detach().clone() for g in self.gates], "movement": self.movement}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for g, v in zip(self.gates, state["gates"]):
                g.copy_(v)
        self.movement = list(state["movement"])

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def finalize(self) -> dict:
        """Remove the masked neurons (and the gates); returns what was removed per layer."""
        self.remove_hooks()
        keep, removed, before = {}, {}, {}
        for i, m in enumerate(self.masks()):
            before[i] = int(m.numel())
            if not m.all():
                keep[i] = m.nonzero().flatten().tolist()
                removed[i] = int((~m).sum())
        remove_ffn_neurons_(self.sm.model, keep)
        return {"score": self.score, "neurons_before": before, "neurons_removed": removed,
                "fraction_removed": sum(removed.values()) / max(1, sum(before.values()))}
