"""Handlers for unstructured and N:M sparsity: choose the layers, calibrate where the method
needs it (layer by layer), compute masks (masks.py, sparsegpt.py), swap in SparseLinear."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters.base import is_linear, linear_classes, linear_weight
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError
from ..core.targets import select_modules
from ..data.calibration import step_batches
from ..models.activations import observe_inputs
from ..models.sequential import run_sequential, sequential_supported, with_hessians
from ..models.surgery import layer_linears, set_module
from .configs import MagnitudeConfig, SparseGPTConfig, WandaConfig, parse_pattern
from .masks import global_threshold, magnitude_scores, mask_layer, mask_nm, mask_rows, wanda_scores
from .modules import SparseLinear
from .sparsegpt import sparsegpt as sparsegpt_math

META_KEY = "sparsity"


def sparse_targets(sm, cfg) -> list[tuple[str, nn.Module]]:
    """cfg.targets (names, classes, 're:' patterns) or, by default, the layers' linear layers
    (never the LM head, embeddings or a task head), minus cfg.ignore."""
    if cfg.targets:
        picked = select_modules(sm.model, cfg.targets, cfg.ignore, default=linear_classes())
    else:
        ignored = {n for n, _ in select_modules(sm.model, cfg.ignore)} if cfg.ignore else set()
        picked = [(n, m) for n, m in layer_linears(sm.model) if n not in ignored]
    picked = [(n, m) for n, m in picked if is_linear(m)]
    if not picked:
        raise ConfigError(f"{cfg.method}: no linear layer to prune (targets={list(cfg.targets)}, ignore={list(cfg.ignore)})")
    n, m = parse_pattern(cfg.pattern)
    if m:
        bad = [name for name, mod in picked if linear_weight(mod).shape[1] % m]
        if bad:
            raise ConfigError(f"{cfg.method}: pattern {cfg.pattern} needs input widths divisible by {m}; "
                              f"{bad[0]} has {linear_weight(dict(picked)[bad[0]]).shape[1]}")
    return picked


def _keep(scores: torch.Tensor, cfg, per_row: bool) -> torch.Tensor:
    n, m = parse_pattern(cfg.pattern)
    if m:
        return mask_nm(scores, n, m)
    return mask_rows(scores, cfg.amount) if per_row else mask_layer(scores, cfg.amount)


def _swap(sm, name: str, mod: nn.Module, weight: torch.Tensor, keep: torch.Tensor, **quant) -> dict:
    new = SparseLinear.from_dense(mod, weight * keep, keep, **quant)
    set_module(sm.model, name, new)
    info = {"type": "sparse_linear", "in": new.in_features, "out": new.out_features, "bias": new.bias is not None,
            "nnz": new.nnz, "bits": new.bits, "group_size": new.group_size}
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = info
    return {"sparsity": round(1 - new.nnz / (new.in_features * new.out_features), 4)}


def _summary(per_layer: dict, cfg) -> dict:
    total = sum(1 for _ in per_layer)
    mean = sum(v["sparsity"] for v in per_layer.values()) / max(total, 1)
    return {"layers": total, "pattern": cfg.pattern or "unstructured", "mean_sparsity": round(mean, 4),
            "per_layer": per_layer}


@register_method(MagnitudeConfig, traits=Traits(bytes_only=True))
def magnitude(sm, cfg: MagnitudeConfig, run) -> Applied:
    targets = sparse_targets(sm, cfg)
    scores = {n: magnitude_scores(linear_weight(m)) for n, m in targets}
    per_layer = {}
    if cfg.scope == "global":
        thr = global_threshold(list(scores.values()), cfg.amount)
        for name, mod in targets:
            keep = scores[name] > thr
            per_layer[name] = _swap(sm, name, mod, linear_weight(mod).float(), keep)
    else:
        for name, mod in tqdm(targets, desc="magnitude pruning", leave=False):
            per_layer[name] = _swap(sm, name, mod, linear_weight(mod).float(), _keep(scores[name], cfg, per_row=False))
    return Applied([], _summary(per_layer, cfg))


@register_method(WandaConfig, traits=Traits(needs_calibration=True, bytes_only=True, layer_local=True))
def wanda(sm, cfg: WandaConfig, run) -> Applied:
    targets = sparse_targets(sm, cfg)
    batches = step_batches(sm, cfg, run)
    sq: dict[str, torch.Tensor] = {}
    per_layer = {}

    def observe(name, x, raw=None):
        s = x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        sq[name] = s if name not in sq else sq[name] + s

    def prune(items):
        for name, mod in items:
            w = linear_weight(mod).float()
            keep = _keep(wanda_scores(w, sq.pop(name).sqrt()), cfg, per_row=True)
            per_layer[name] = _swap(sm, name, mod, w, keep)

    if cfg.sequential and sequential_supported(sm):
        run_sequential(sm, targets, batches, observe, prune, desc="wanda (layer by layer)", true_sequential=False)
    else:
        if getattr(sm, "stream", None) is not None:
            raise ConfigError("wanda: a streamed model is calibrated layer by layer; set sequential: true")
        observe_inputs(sm, targets, batches, observe, "wanda calibration")
        prune(targets)
    return Applied([], _summary(per_layer, cfg))


@register_method(SparseGPTConfig, traits=Traits(needs_calibration=True, bytes_only=True, layer_local=True))
def sparsegpt(sm, cfg: SparseGPTConfig, run) -> Applied:
    targets = sparse_targets(sm, cfg)
    batches = step_batches(sm, cfg, run)
    n, m = parse_pattern(cfg.pattern)
    per_layer = {}
    warnings = []

    def prune_one(name, mod, H):
        w = linear_weight(mod).float()
        r = sparsegpt_math(w, H, amount=cfg.amount, n=n, m=m, blocksize=cfg.blocksize, damp=cfg.damp,
                           bits=cfg.bits or None, group_size=cfg.group_size)
        quant = dict(codes=r.codes, scales=r.scales, zeros=r.zeros, bits=cfg.bits, group_size=cfg.group_size) \
            if cfg.bits else {}
        per_layer[name] = {**_swap(sm, name, mod, r.weight, r.mask, **quant), "relative_error": round(r.error, 6)}

    warnings += with_hessians(sm, targets, batches, prune_one, cfg.sequential, name="sparsegpt")
    details = _summary(per_layer, cfg)
    if cfg.bits:
        details["values"] = f"int{cfg.bits} g{cfg.group_size}"
    return Applied(warnings, details)
