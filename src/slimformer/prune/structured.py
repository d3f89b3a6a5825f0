"""Handlers for structured pruning: score units with an importance from the registry, pick the
least important, and remove them physically through the shared surgery (models/surgery.py)."""
from __future__ import annotations

import torch

from ..adapters import get_adapter
from ..adapters.base import linear_weight
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError, DataError
from ..data import model_batches
from ..models.surgery import remove_ffn_neurons_, remove_heads_, remove_layers_
from .configs import FFNPruningConfig, HeadPruningConfig, LayerDropConfig
from .importance import IMPORTANCE, block_influence, input_means

_NEEDS_DATA = ("activation", "energy", "taylor")


def _batches(sm, cfg, run, needed: bool):
    data = run.calibration
    if not needed:
        return []
    if not data:
        raise DataError(f"{cfg.method}: importance {getattr(cfg, 'importance', '')!r} needs calibration data "
                        "(texts); none was given (pass data=..., or --data PATH)")
    return model_batches(sm, list(data), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)


def _choose(scores: dict[int, torch.Tensor], amount: float, scope: str) -> dict[int, list[int]]:
    """{layer: unit indices to remove}: the `amount` lowest of each layer, or of all layers
    (global), always keeping at least one unit per layer."""
    drop: dict[int, list[int]] = {}
    if scope == "layer":
        for i, s in scores.items():
            k = min(int(round(len(s) * amount)), len(s) - 1)
            drop[i] = sorted(torch.argsort(s)[:k].tolist()) if k > 0 else []
        return drop
    flat = [(float(v), i, u) for i, s in scores.items() for u, v in enumerate(s)]
    k = int(round(len(flat) * amount))
    left = {i: len(s) for i, s in scores.items()}
    drop = {i: [] for i in scores}
    for v, i, u in sorted(flat):
        if k <= 0:
            break
        if left[i] > 1:
            drop[i].append(u)
            left[i] -= 1
            k -= 1
    return {i: sorted(v) for i, v in drop.items()}


@register_method(HeadPruningConfig, traits=Traits(needs_calibration=True, changes_shapes=True))
def prune_heads(sm, cfg: HeadPruningConfig, run) -> Applied:
    batches = _batches(sm, cfg, run, cfg.importance in _NEEDS_DATA)
    scores = IMPORTANCE.get(cfg.importance)(sm, "heads", batches)
    drop = _choose(scores, cfg.amount, cfg.scope)
    before = {i: li.attention.num_kv_heads for i, li in enumerate(get_adapter(sm.model).layers(sm.model))}
    left = remove_heads_(sm.model, {i: d for i, d in drop.items() if d})
    units = {i: left.get(i, n) for i, n in before.items()}
    removed = sum(len(d) for d in drop.values())
    details = {"importance": cfg.importance, "scope": cfg.scope, "units_removed": removed,
               "units_before": sum(before.values()), "units_per_layer": units,
               "removed": {i: d for i, d in drop.items() if d}}
    return Applied([f"prune_heads: removed {removed} of {sum(before.values())} attention units"], details)


@register_method(FFNPruningConfig, traits=Traits(needs_calibration=True, changes_shapes=True))
def prune_ffn(sm, cfg: FFNPruningConfig, run) -> Applied:
    need = cfg.importance in _NEEDS_DATA or cfg.bias_compensation
    batches = _batches(sm, cfg, run, need)
    layers = get_adapter(sm.model).layers(sm.model)
    if cfg.bias_compensation and any(getattr(li.ffn.down, "bias", None) is None for li in layers):
        raise ConfigError("prune_ffn: bias_compensation adds the removed neurons' mean contribution to the down "
                          "projection's bias, and this model's down projection has none (Llama family); use "
                          "bias_compensation=false")
    scores = IMPORTANCE.get(cfg.importance)(sm, "ffn", batches)
    drop = _choose(scores, cfg.amount, cfg.scope)
    means = input_means(sm, "ffn", batches) if cfg.bias_compensation else {}
    keep = {}
    for i, d in drop.items():
        if not d:
            continue
        n = layers[i].ffn.intermediate_size
        gone = torch.tensor(d)
        keep[i] = [j for j in range(n) if j not in set(d)]
        if cfg.bias_compensation:
            down = layers[i].ffn.down
            with torch.no_grad():
                down.bias += linear_weight(down).float()[:, gone] @ means[i][gone]
    sizes = remove_ffn_neurons_(sm.model, keep)
    before = sum(li.ffn.intermediate_size for li in layers)
    removed = sum(len(d) for d in drop.values())
    details = {"importance": cfg.importance, "scope": cfg.scope, "neurons_removed": removed, "neurons_before": before,
               "intermediate_per_layer": {i: sizes.get(i, li.ffn.intermediate_size) for i, li in enumerate(layers)},
               "bias_compensation": cfg.bias_compensation}
    return Applied([f"prune_ffn: removed {removed} of {before} FFN neurons"], details)


@register_method(LayerDropConfig, traits=Traits(needs_calibration=True, changes_shapes=True))
def drop_layers(sm, cfg: LayerDropConfig, run) -> Applied:
    stacks = get_adapter(sm.model).layer_containers(sm.model)
    if len(stacks) != 1:
        raise ConfigError(f"drop_layers: this model has the layer stacks {', '.join(stacks)}; dropping layers by "
                          "importance supports single-stack models (encoders, decoder LMs)")
    stack, layers = next(iter(stacks.items()))
    n = len(layers)
    count = cfg.count or int(round(n * cfg.amount))
    if not 0 < count < n:
        raise ConfigError(f"drop_layers: removing {count} of {n} layers; accepted: 1..{n - 1}")
    if cfg.importance == "last":
        infl = [float(i) for i in range(n)]
    else:
        batches = _batches(sm, cfg, run, True)
        infl = block_influence(sm, batches)[stack]
    order = sorted(range(n), key=lambda i: infl[i])
    gone = sorted(order[:count])
    remove_layers_(sm.model, [i for i in range(n) if i not in gone])
    details = {"importance": cfg.importance, "removed_layers": gone, "layers_left": n - count,
               "influence": [round(v, 6) for v in infl]}
    return Applied([f"drop_layers: removed layers {gone} of {n}"], details)
