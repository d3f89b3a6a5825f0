"""Recipe steps that prune during the next training step (distill or finetune): each hands a
trainer callback to the run, the training step trains with it and then makes its masks permanent.

    steps:
      - method: movement          # 50% of FFN neurons, movement scores, removed after training
        amount: 0.5
      - method: distill
"""
from __future__ import annotations

from ..core.config import Applied, Traits, register_method
from .configs import GradualMagnitudeConfig, GroupLassoConfig, MovementConfig
from .neurons import NeuronMasking
from .training import GradualMagnitude, GroupLasso, MovementPruning

_DURING = Traits(wraps_training=True, changes_shapes=True)


def _hand_over(sm, cfg, run, score: str) -> Applied:
    start, end = float(cfg.start), float(cfg.end)
    if cfg.structure == "ffn":
        cb = NeuronMasking(sm, cfg.amount, start, end, cfg.every, score=score, scope=cfg.scope)
        what = f"{cfg.amount:.0%} of FFN neurons ({score} scores, {cfg.scope})"
    else:
        cls = MovementPruning if score == "movement" else GradualMagnitude
        cb = cls(sm, cfg.amount, start, end, cfg.every)
        what = f"{cfg.amount:.0%} of each Linear's weights ({score} scores)"
    run.training_callbacks.append(cb)
    return Applied([f"{cfg.method}: {what} pruned during the next training step (cubic schedule over {start:.0%}.."
                    f"{end:.0%} of its steps)"],
                   {"amount": cfg.amount, "structure": cfg.structure, "score": score, "applies_during": "next training step"})


@register_method(MovementConfig, traits=_DURING)
def movement(sm, cfg: MovementConfig, run) -> Applied:
    return _hand_over(sm, cfg, run, "movement")


@register_method(GradualMagnitudeConfig, traits=_DURING)
def gradual_magnitude(sm, cfg: GradualMagnitudeConfig, run) -> Applied:
    return _hand_over(sm, cfg, run, "magnitude")


@register_method(GroupLassoConfig, traits=_DURING)
def group_lasso(sm, cfg: GroupLassoConfig, run) -> Applied:
    run.training_callbacks.append(GroupLasso(sm, cfg.weight, cfg.heads, cfg.ffn, cfg.threshold))
    return Applied([f"group_lasso: weight {cfg.weight:g} on heads/FFN neurons during the next training step; groups "
                    f"below {cfg.threshold:g} x their layer's median norm removed after it"],
                   {"weight": cfg.weight, "threshold": cfg.threshold, "applies_during": "next training step"})
