"""Handlers of the low-rank methods (svd, fwsvd, asvd, svd_llm) and the factorized embedding:
choose the layers, read what the method weighs the weight by (nothing, Fisher rows, activation
magnitudes, the whitening Cholesky factor), allocate ranks to the ratio, swap in LowRankLinear.
The math is in lowrank_math.py."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..adapters.base import is_conv1d, is_linear, linear_classes, linear_weight, unwrap
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError
from ..core.targets import select_modules
from ..data.calibration import step_batches
from ..models.activations import hessians, input_absmean
from ..models.gradients import backward_passes
from ..models.sequential import sequential_supported, with_hessians
from ..models.surgery import module_names, replace_module, set_module
from . import lowrank_math as lm
from .configs import AsvdConfig, EmbeddingFactorConfig, FwsvdConfig, SvdConfig, SvdLlmConfig
from .modules import META_KEY, FactorizedEmbedding, LowRankLinear
from .roles import PARTS, role_modules


def lowrank_targets(sm, cfg) -> list[tuple[str, nn.Module]]:
    """cfg.targets (names, classes, 're:' patterns) or, by default, the Transformer layers' linear
    layers (q/k/v/o, FFN; never the LM head, embeddings or a task head), minus cfg.ignore."""
    if cfg.targets:
        picked = select_modules(sm.model, cfg.targets, cfg.ignore, default=linear_classes())
    else:
        ignored = {n for n, _ in select_modules(sm.model, cfg.ignore)} if cfg.ignore else set()
        roles = PARTS[cfg.parts]
        names = module_names(sm.model)
        picked = [(names[id(m)], m) for li in get_adapter(sm.model).layers(sm.model)
                  for role, m in role_modules(li).items() if role.removeprefix("x_") in roles]
        picked = [(n, m) for n, m in picked if n not in ignored]
    picked = [(n, m) for n, m in picked if is_linear(m)]
    if not picked:
        raise ConfigError(f"{cfg.method}: no float linear layer to factorize (targets={list(cfg.targets)}, "
                          f"ignore={list(cfg.ignore)}; factorize before quantizing)")
    return picked


def _shape(m: nn.Module) -> tuple[int, int]:
    return tuple(linear_weight(m).shape)


def check_rank(sm, cfg) -> None:
    """A fixed rank must fit every targeted layer and make it smaller (one-line error otherwise)."""
    if not getattr(cfg, "rank", 0):
        return
    for name, m in lowrank_targets(sm, cfg):
        o, i = _shape(m)
        if cfg.rank > min(o, i):
            raise ConfigError(f"{cfg.method}: rank {cfg.rank} is larger than {name}'s {o} x {i} weight allows; "
                              f"accepted: 1..{min(o, i)}")
        if cfg.rank > lm.break_even_rank(o, i):
            raise ConfigError(f"{cfg.method}: rank {cfg.rank} saves nothing on {name} ({o} x {i}: a rank-r pair "
                              f"is smaller only for r < {o}*{i}/({o}+{i})); accepted: 1..{lm.break_even_rank(o, i)}")


def _fisher_rows(sm, targets, batches) -> dict[str, torch.Tensor]:
    """{name: (out,) summed squared gradients of each output row's weights}."""
    acc: dict[str, torch.Tensor] = {}

    def add():
        for name, m in targets:
            g = m.weight.grad
            if g is None:
                continue
            rows = g.float().pow(2).sum(0 if is_conv1d(m) else 1)
            acc[name] = rows if name not in acc else acc[name] + rows

    backward_passes(sm, [m.weight for _, m in targets], tqdm(batches, desc="fwsvd gradients", leave=False), add,
                    loss="fisher")
    return acc


def _weightings(sm, cfg, targets, run) -> dict[str, dict]:
    """{name: keyword weighting for lm.factorize (row / col / S)} as the method defines it."""
    if cfg.method == "svd":
        return {n: {} for n, _ in targets}
    batches = step_batches(sm, cfg, run)
    if cfg.method == "fwsvd":
        fisher = _fisher_rows(sm, targets, batches)
        out = {}
        for n, m in targets:
            f = fisher.get(n, torch.ones(_shape(m)[0]))
            f = f / f.mean().clamp_min(1e-30)
            out[n] = {"row": f.clamp_min(1e-3).sqrt()}
        return out
    if cfg.method == "asvd":
        mean = input_absmean(sm, targets, batches, "asvd calibration")
        return {n: {"col": lm.activation_scale(mean[n], cfg.alpha)} for n, _ in targets}
    hs = hessians(sm, targets, batches, "svd_llm calibration")
    whiten: dict[int, torch.Tensor] = {}  # layers fed the same input share one accumulator: one Cholesky
    out = {}
    for n, _ in targets:
        acc = hs[n]
        if id(acc) not in whiten:
            whiten[id(acc)] = lm.whitening(acc.H)
        out[n] = {"S": whiten[id(acc)]}
    return out


def _ranks(cfg, targets, weights) -> list[int]:
    shapes = [_shape(m) for _, m in targets]
    if cfg.rank:
        return [cfg.rank] * len(targets)
    if cfg.allocation == "uniform":
        ranks = lm.uniform_ranks(shapes, cfg.ratio)
    else:
        spectra = [lm.spectrum(linear_weight(m).float(), **weights[n])
                   for n, m in tqdm(targets, desc=f"{cfg.method} spectra", leave=False)]
        ranks = lm.ranks_from_spectra(shapes, spectra, cfg.ratio)
    k = cfg.rank_multiple
    return [r - r % k if r >= k else r for r in ranks]


def swap_low_rank(sm, name: str, mod: nn.Module, a: torch.Tensor, b: torch.Tensor) -> LowRankLinear:
    """Put a LowRankLinear of factors a (out x r) @ b (r x in) and `mod`'s bias at `name`, recorded
    for the save."""
    bias = getattr(mod, "bias", None)
    new = LowRankLinear.from_factors(a.float(), b.float(), bias.detach().float() if bias is not None else None)
    set_module(sm.model, name, new)
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = new.record()
    return new


def lowrank(sm, cfg, run) -> Applied:
    check_rank(sm, cfg)
    targets = lowrank_targets(sm, cfg)
    sequential = getattr(cfg, "sequential", False) and sequential_supported(sm)
    weights = _weightings(sm, cfg, targets, run) if not sequential or cfg.allocation == "spectrum" else {}
    ranks = _ranks(cfg, targets, weights)
    shapes = [_shape(m) for _, m in targets]
    per_layer, dense = {}, []
    rank_of = {n: r for (n, _), r in zip(targets, ranks)}

    def one(name, mod, weighting):
        o, i = _shape(mod)
        r = rank_of[name]
        if r == 0 or r > lm.break_even_rank(o, i):
            dense.append(name)
            return
        f = lm.factorize(linear_weight(mod).float(), r, **weighting)
        swap_low_rank(sm, name, mod, f.a, f.b)
        per_layer[name] = {"shape": [o, i], "rank": r, "kept": round(r * (o + i) / (o * i), 4),
                           "relative_loss": round(f.dropped / max(f.energy, 1e-30), 6)}

    if sequential:  # whitened with the inputs the factorized layers before it give
        whiten: dict[int, tuple] = {}

        def seq(name, mod, H):
            key = H.data_ptr()
            if key not in whiten:
                whiten[key] = (H, lm.whitening(H))  # q/k/v (gate/up) share one input: one Cholesky
            one(name, mod, {"S": whiten[key][1]})

        with_hessians(sm, targets, step_batches(sm, cfg, run), seq, sequential=True, true_sequential=True,
                      name=cfg.method)
    else:
        for name, mod in tqdm(targets, desc=cfg.method, leave=False):
            one(name, mod, weights[name])
    ranks = [0 if n in dense else r for (n, _), r in zip(targets, ranks)]
    kept = lm.kept_fraction(shapes, ranks)
    warnings = []
    if dense:
        warnings.append(f"{cfg.method}: {len(dense)} of {len(targets)} layers stay dense (a factorization at ratio "
                        f"{cfg.ratio} would not make them smaller), e.g. {dense[0]}")
    details = {"layers": len(per_layer), "ratio": cfg.ratio, "kept": round(kept, 4), "allocation":
               "fixed rank" if cfg.rank else cfg.allocation, "per_layer": per_layer,
               "saves_compute": bool(per_layer)}
    return Applied(warnings, details)


register_method(SvdConfig, lowrank, traits=Traits(changes_shapes=True), check=check_rank)
for _cls in (FwsvdConfig, AsvdConfig, SvdLlmConfig):
    register_method(_cls, lowrank, traits=Traits(changes_shapes=True, needs_calibration=True), check=check_rank)


def _embedding(sm) -> tuple[str, nn.Embedding]:
    model = sm.model
    emb = get_adapter(model).embeddings(model)
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"factorize_embedding: the token embedding is a {type(emb).__name__}, not a float "
                          "nn.Embedding (factorize it before quantizing, and only once)")
    head = get_adapter(model).lm_head(model)
    if head is not None and getattr(head, "weight", None) is emb.weight:
        raise ConfigError("factorize_embedding: this model ties its token embedding to the LM head; factorizing "
                          "it would change the head too (accepted: models whose embedding is not tied)")
    return module_names(unwrap(model))[id(emb)], emb


def check_embedding(sm, cfg) -> None:
    _, emb = _embedding(sm)
    v, h = emb.weight.shape
    top = lm.break_even_rank(v, h)
    if cfg.rank > top:
        raise ConfigError(f"factorize_embedding: rank {cfg.rank} saves nothing on the {v} x {h} token table; "
                          f"accepted: 1..{top}")


@register_method(EmbeddingFactorConfig, traits=Traits(changes_shapes=True), check=check_embedding)
def factorize_embedding(sm, cfg: EmbeddingFactorConfig, run) -> Applied:
    check_embedding(sm, cfg)
    name, emb = _embedding(sm)
    f = lm.factorize(emb.weight.detach().float(), cfg.rank)
    v, h = emb.weight.shape
    new = FactorizedEmbedding(v, h, cfg.rank, emb.padding_idx)
    with torch.no_grad():
        new.table.weight.copy_(f.a)
        new.project.weight.copy_(f.b.t())
    replace_module(unwrap(sm.model), emb, new)
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = new.record()
    return Applied([], {"name": name, "shape": [v, h], "rank": cfg.rank,
                        "params_removed": v * h - cfg.rank * (v + h),
                        "relative_loss": round(f.dropped / max(f.energy, 1e-30), 6)})
