"""Cross-layer weight sharing: share_layers (ALBERT-style, groups of adjacent layers use one set
of linear weights) and basis_sharing (the layers of a group share one whitened SVD basis per kind
of weight and keep their own coefficients). A shared module is one module object under several
names: recorded as `shared` under its other names, stored once on disk, shared again after a load."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..adapters.base import linear_weight
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError
from ..data.calibration import step_batches
from ..models.activations import hessians
from ..models.hooks import SHARED
from ..models.surgery import mark_shared, module_names, set_module
from . import lowrank_math as lm
from .configs import BasisSharingConfig, ShareLayersConfig
from .lowrank import swap_low_rank
from .modules import META_KEY
from .roles import role_modules

def layer_groups(sm, size: int) -> list[list]:
    """Adjacent layers of each stack in groups of `size` (the last group of a stack may be smaller;
    a group of one shares nothing and is left out)."""
    layers = get_adapter(sm.model).layers(sm.model)
    groups, cur = [], []
    for li in layers:
        if cur and (cur[-1].stack != li.stack or len(cur) == size):
            groups.append(cur)
            cur = []
        cur.append(li)
    if cur:
        groups.append(cur)
    return [g for g in groups if len(g) > 1]


def _members(sm, group, roles=None) -> dict[str, list[tuple[str, nn.Module]]]:
    """{role: [(name, module) per layer of the group]}; the shapes must agree (one-line error)."""
    names = module_names(sm.model)
    per_role: dict[str, list] = {}
    for li in group:
        for role, m in role_modules(li).items():
            if roles is None or role.removeprefix("x_") in roles:
                per_role.setdefault(role, []).append((names[id(m)], m))
    for role, mods in per_role.items():
        if len(mods) != len(group):
            raise ConfigError(f"weight sharing: not every layer of {[li.index for li in group]} has a {role} layer")
        try:
            shapes = {tuple(linear_weight(m).shape) for _, m in mods}
        except TypeError:
            raise ConfigError(f"weight sharing: {mods[0][0]} is a {type(mods[0][1]).__name__}, not a float linear "
                              "layer; share weights before quantizing or factorizing") from None
        if len(shapes) > 1:
            raise ConfigError(f"weight sharing: the {role} layers of layers {[li.index for li in group]} have "
                              f"different shapes {sorted(shapes)} (after structured pruning?); accepted: layers of "
                              "one shape (share before pruning)")
    return per_role


def _record_shared(sm, alias: str, of: str) -> None:
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[alias] = {"type": SHARED, "of": of}


def _groups_or_error(sm, size: int, method: str) -> list[list]:
    groups = layer_groups(sm, size)
    if not groups:
        raise ConfigError(f"{method}: no two adjacent layers to share (the model has "
                          f"{len(get_adapter(sm.model).layers(sm.model))} layer(s)); accepted: models of 2+ layers")
    return groups


def check_share(sm, cfg) -> None:
    for g in _groups_or_error(sm, cfg.group, cfg.method):
        _members(sm, g, getattr(cfg, "shared", None))


@register_method(ShareLayersConfig, traits=Traits(bytes_only=True), check=check_share)
def share_layers(sm, cfg: ShareLayersConfig, run) -> Applied:
    groups = _groups_or_error(sm, cfg.group, cfg.method)
    per_role_all = [_members(sm, g) for g in groups]  # every group checked before any change
    mark_shared(sm.model)
    shared = 0
    for group, per_role in zip(groups, per_role_all):
        for role, mods in per_role.items():
            first_name, first = mods[0]
            if cfg.init == "mean":
                with torch.no_grad():
                    first.weight.copy_(torch.stack([m.weight.detach() for _, m in mods]).mean(0))
                    if getattr(first, "bias", None) is not None:
                        first.bias.copy_(torch.stack([m.bias.detach() for _, m in mods]).mean(0))
            for name, m in mods[1:]:
                set_module(sm.model, name, first)
                _record_shared(sm, name, first_name)
                shared += sum(p.numel() for p in m.parameters())
    return Applied(["share_layers saves bytes, not compute: every layer still runs (size only)"],
                   {"groups": [[li.index for li in g] for g in groups], "init": cfg.init, "params_shared": shared,
                    "saves_compute": False})


@register_method(BasisSharingConfig, traits=Traits(changes_shapes=True, needs_calibration=True), check=check_share)
def basis_sharing(sm, cfg: BasisSharingConfig, run) -> Applied:
    groups = _groups_or_error(sm, cfg.group, cfg.method)
    per_role_all = [_members(sm, g, cfg.shared) for g in groups]
    # layers in no group (a lone last layer) and the kinds not shared: SVD-LLM, one layer at a time
    grouped = {n for pr in per_role_all for mods in pr.values() for n, _ in mods}
    names = module_names(sm.model)
    for li in get_adapter(sm.model).layers(sm.model):
        for role, m in role_modules(li).items():
            if names[id(m)] not in grouped:
                per_role_all.append({role: [(names[id(m)], m)]})
    targets = [(n, m) for pr in per_role_all for mods in pr.values() for n, m in mods]
    hs = hessians(sm, targets, step_batches(sm, cfg, run), "basis_sharing calibration")
    mark_shared(sm.model)
    per_kind, dense = {}, []
    total = kept = 0
    for per_role in tqdm(per_role_all, desc="basis sharing", leave=False):
        for role, mods in per_role.items():
            ws = [linear_weight(m).float() for _, m in mods]
            o, i = ws[0].shape
            n = len(mods)
            total += n * o * i
            r = lm.shared_rank(o, i, n, cfg.ratio)
            if cfg.ratio >= 1.0 or r > min(n * o, i) or r * (i + n * o) >= n * o * i:
                dense += [name for name, _ in mods]
                kept += n * o * i
                continue
            H = sum(hs[name].H for name, _ in mods) / n
            b, coeffs, dropped, energy = lm.shared_basis(ws, r, lm.whitening(H))
            first = None
            for (name, m), a in zip(mods, coeffs):
                new = swap_low_rank(sm, name, m, a, b)
                if first is None:
                    first, first_name = new.first, name + ".first"
                else:
                    new.first = first  # the group's one basis
                    _record_shared(sm, name + ".first", first_name)
            kept += r * (i + n * o)
            key = role if n > 1 else f"{role} (alone)"
            per_kind.setdefault(key, []).append({"layers": [name for name, _ in mods], "rank": r,
                                                 "relative_loss": round(dropped / max(energy, 1e-30), 6)})
    warnings = [f"basis_sharing: {len(dense)} layers stay dense (no saving at ratio {cfg.ratio}), e.g. {dense[0]}"] \
        if dense else []
    return Applied(warnings, {"groups": [[li.index for li in g] for g in groups], "ratio": cfg.ratio,
                              "kept": round(kept / max(total, 1), 4), "shared": list(cfg.shared),
                              "per_kind": per_kind, "saves_compute": True})
