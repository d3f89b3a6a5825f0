"""Handlers: walk the model, swap modules, record what was done. The math is elsewhere."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..core.errors import ConfigError
from ..core.targets import select_modules
from .awq import awq_scale_
from .awq import summary as awq_summary
from .calibrate import calibration_inputs, observe_inputs
from .configs import Int8DynamicConfig, Int8StaticConfig, SmoothQuantConfig, WeightOnlyConfig
from .gptq import HessianAccumulator, coordinate_descent, gptq_quantize, refit_gptq
from .modules import GroupQuantLinear, Int8Embedding, Int8Linear, Int8TiedHead, SmoothedLinear, linear_weight
from .modules import set_module as _set_module
from .observers import RunningObserver
from .qmath import dequantize_groupwise, quantize_groupwise, resolve_group_size
from .rotation import RotatedLinear, RotatedNorm, Rotation, rotate_
from .sequential import run_sequential, sequential_supported
from .smoothquant import smoothing_scales

META_KEY = "quantization"


def _is_linear(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def head_name(sm) -> str | None:
    head = get_adapter(sm.model).lm_head(sm.model)
    return _names(sm.model).get(id(head)) if head is not None else None


def linear_targets(sm, cfg, include_head: bool) -> list[tuple[str, nn.Module]]:
    """Linear layers to quantize: cfg.targets (default: every Linear/Conv1D) minus cfg.ignore,
    minus the LM head unless include_head."""
    from transformers.pytorch_utils import Conv1D

    picked = [(n, m) for n, m in select_modules(sm.model, cfg.targets, cfg.ignore, default=(nn.Linear, Conv1D))
              if _is_linear(m)]
    head = head_name(sm)
    return [(n, m) for n, m in picked if include_head or n != head]


def _record(sm, name: str, info: dict) -> None:
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = info
    sm.model.config.slimformer_quantization = sm.meta["modules"][META_KEY]


def _replace_linear(sm, name: str, mod: nn.Module, act: str | None, per_channel: bool = True,
                    act_scale: float | None = None) -> None:
    """Swap in an Int8Linear. Replacing a tied head gives it its own (quantized) weight; the
    config's tie flag stays, so a reload builds the same float model first, then these modules."""
    new = Int8Linear.from_float(mod, act=act, per_channel=per_channel, act_scale=act_scale)
    _set_module(sm.model, name, new)
    _record(sm, name, {"type": "int8_linear", "act": act, "smooth": new.input_scale is not None,
                       "in": new.in_features, "out": new.out_features, "bias": new.bias is not None})


def quantize_embedding(sm) -> list[str]:
    """Store the token embedding int8 per row. Every module sharing its weight is replaced by the
    one quantized module; when one of them is a subclass with its own forward (BART/Marian scale
    embeddings), the table stays float and a warning says so."""
    model = sm.model
    adapter = get_adapter(model)
    emb = adapter.embeddings(model)
    sharing = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
               if isinstance(m, nn.Embedding) and m.weight is emb.weight]
    odd = sorted({type(m).__name__ for _, m in sharing if type(m) is not nn.Embedding})
    if odd:
        return [f"embedding table kept float: {', '.join(odd)} has its own forward (e.g. scaling)"]
    head = adapter.lm_head(model)
    tied = tied_head(sm)  # a float head tied to it
    new = Int8Embedding.from_float(emb)
    for n, _ in sharing:
        _set_module(model, n, new)
    _record(sm, sharing[0][0], {"type": "int8_embedding", "num": emb.num_embeddings, "dim": emb.embedding_dim,
                                "padding_idx": emb.padding_idx, "aliases": [n for n, _ in sharing[1:]]})
    if tied:
        hname = _names(model)[id(head)]
        if isinstance(head, nn.Linear) and head.bias is None:
            # the head reads the same int8 table: stored once, like the tied float weight
            _set_module(model, hname, Int8TiedHead(new))
            _record(sm, hname, {"type": "int8_tied_head", "embedding": sharing[0][0]})
        else:
            _replace_linear(sm, hname, head, act=None)
    return []


def tied_head(sm) -> bool:
    """Whether the LM head shares the token embedding's weight (tie_word_embeddings)."""
    adapter = get_adapter(sm.model)
    head, emb = adapter.lm_head(sm.model), adapter.embeddings(sm.model)
    return head is not None and emb is not None and getattr(head, "weight", None) is emb.weight


# ------------------------------------------------------------------ int8 (dynamic, static)


def int8_dynamic(sm, cfg: Int8DynamicConfig, data) -> list[str]:
    for name, mod in tqdm(linear_targets(sm, cfg, include_head=True), desc="int8", leave=False):
        _replace_linear(sm, name, mod, act="token")
    return quantize_embedding(sm) if cfg.embeddings else []


def int8_static(sm, cfg: Int8StaticConfig, data) -> list[str]:
    targets = linear_targets(sm, cfg, include_head=True)
    obs = {n: RunningObserver(cfg.observer, 8, True, None, max_samples=2**18,
                              **({"percentile": cfg.percentile} if cfg.observer == "percentile" else {}))
           for n, _ in targets}
    batches = calibration_inputs(sm, list(data or []), cfg.calibration_tokens)
    smooth = {n: m.input_scale for n, m in targets if getattr(m, "input_scale", None) is not None}

    def consume(n, x):  # the quantizer sees the input after any SmoothQuant scaling
        obs[n].update(x * smooth[n] if n in smooth else x)

    observe_inputs(sm, targets, batches, consume, "int8 static calibration")
    for name, mod in tqdm(targets, desc="int8 static", leave=False):
        scale, _ = obs[name].compute()
        _replace_linear(sm, name, mod, act="static", per_channel=cfg.per_channel, act_scale=float(scale))
    return quantize_embedding(sm) if cfg.embeddings else []


def smoothquant(sm, cfg: SmoothQuantConfig, data) -> list[str]:
    """Per-channel smoothing of each Linear's input (x / s, W * s), s from calibration absmax.
    The scale is kept on the layer (`input_scale`) so it is exact for every architecture;
    a later int8 step quantizes the smoothed weight and keeps the scale."""
    targets = [(n, m) for n, m in linear_targets(sm, cfg, include_head=False) if isinstance(m, nn.Linear)]
    amax = {}

    def consume(name, x):
        a = x.reshape(-1, x.shape[-1]).abs().amax(0)
        amax[name] = a if name not in amax else torch.maximum(amax[name], a)

    observe_inputs(sm, targets, calibration_inputs(sm, list(data or []), 128), consume, "smoothquant calibration")
    for name, mod in targets:
        w = mod.weight.detach().float()
        s = smoothing_scales(amax[name], w.abs().amax(0), cfg.alpha)
        new = SmoothedLinear(mod.in_features, mod.out_features, mod.bias is not None)
        with torch.no_grad():
            new.weight.copy_(w * s)
            new.input_scale.copy_(1.0 / s)
            if mod.bias is not None:
                new.bias.copy_(mod.bias)
        _set_module(sm.model, name, new)
        _record(sm, name, {"type": "smoothed_linear", "in": mod.in_features, "out": mod.out_features,
                           "bias": mod.bias is not None})
    return []


# ------------------------------------------------------------------ weight-only (RTN / GPTQ)


def weight_only(sm, cfg: WeightOnlyConfig, data) -> list[str]:
    warnings = []
    targets, head, body = _weight_only_layers(sm, cfg)
    tied = tied_head(sm)
    names = {n for n, _ in body}
    wide = _pattern_layers(sm, cfg.int8_targets, names, "int8_targets", warnings)
    fine = _pattern_layers(sm, cfg.fine_targets, names, "fine_targets", warnings)
    if wide & fine:
        raise ConfigError(f"WeightOnlyConfig: layers in both int8_targets and fine_targets: {', '.join(sorted(wide & fine))}; "
                          "a layer takes one of them")

    def layer_of(name):  # (bits, group size, float zeros) of one layer
        if name in wide:
            return 8, cfg.group_size, cfg.float_zeros
        if name in fine:
            return cfg.bits, cfg.fine_group_size, True
        return cfg.bits, cfg.group_size, cfg.float_zeros

    batches = None
    if cfg.rotate:
        warnings += _rotate(sm, names, cfg.rotate_seed)
        targets, head, body = _weight_only_layers(sm, cfg)  # the down projections are new modules
    if cfg.awq:
        batches = _awq_batches(sm, cfg, data)
        warnings += _awq(sm, cfg, names, layer_of, batches)
    if cfg.algorithm == "gptq":
        if not data:
            raise ValueError("GPTQ needs calibration data (texts); none was given")
        batches = batches or calibration_inputs(sm, list(data), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)
        if cfg.sequential and sequential_supported(sm):
            hs, observe = _hessian_collector()

            def quantize_layer(items):
                for name, mod in items:
                    _group_quantize(sm, name, mod, cfg, hs.pop(name).H, layer_of(name))
                observe.seen.clear()

            run_sequential(sm, body, batches, observe, quantize_layer, desc="gptq (layer by layer)",
                           true_sequential=cfg.true_sequential)
        else:
            if cfg.sequential:
                warnings.append("GPTQ: layer-by-layer calibration does not apply to this architecture; "
                                "Hessians come from one pass of the float model")
            hs = _hessians(sm, body, batches)
            for name, mod in tqdm(body, desc="gptq", leave=False):
                _group_quantize(sm, name, mod, cfg, hs.pop(name).H, layer_of(name))
    else:
        for name, mod in tqdm(body, desc=f"int{cfg.bits} rtn", leave=False):
            _group_quantize(sm, name, mod, cfg, None, layer_of(name))
    if head is not None and any(n == head for n, _ in targets) and not (cfg.embeddings and tied):
        # the head: int8 per channel weight-only (vocab-sized; 4 bits hurt)
        _replace_linear(sm, head, sm.model.get_submodule(head), act=None)
    if cfg.embeddings:
        # int8 per row; a head tied to the table reads the same int8 table (stored once)
        warnings += quantize_embedding(sm)
        if tied and any(n == head for n, _ in targets) and _is_linear(sm.model.get_submodule(head)):
            _replace_linear(sm, head, sm.model.get_submodule(head), act=None)  # the table stayed float
    if wide:
        n8 = sum(1 for n, _ in body if n in wide)
        warnings.append(f"mixed int4/int8: {n8} of {len(body)} layers at 8 bits")
    if fine:
        nf = sum(1 for n, _ in body if n in fine)
        warnings.append(f"mixed group sizes: {nf} of {len(body)} layers at group {cfg.fine_group_size} (float zeros)")
    return warnings


def _weight_only_layers(sm, cfg: WeightOnlyConfig):
    """(targets, LM head name, body): the Linear layers cfg quantizes, and those of them other
    than the head (the body is quantized group-wise; the head int8)."""
    targets = linear_targets(sm, cfg, include_head=cfg.lm_head)
    head = head_name(sm)
    return targets, head, [(n, m) for n, m in targets if n != head]


def _awq_batches(sm, cfg: WeightOnlyConfig, data) -> list[dict]:
    if not data:
        raise ValueError("WeightOnlyConfig.awq=True searches activation-aware scales on calibration data; "
                         "no texts were given (pass data=..., or --data PATH on the command line)")
    return calibration_inputs(sm, list(data), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)


def _awq(sm, cfg: WeightOnlyConfig, names: set[str], layer_of, batches) -> list[str]:
    """Fold AWQ scales into the float model (awq.py), each group searched with its layers' own
    round-to-nearest quantizer; records alpha per group under meta["awq"]."""
    def quantizer_of(name):
        bits, gs, fz = layer_of(name)
        sym = cfg.symmetric and not fz

        def q(w):
            g = resolve_group_size(w.shape[1], None if gs == -1 else gs)
            return dequantize_groupwise(*quantize_groupwise(w, bits, g, sym, False, fz), group_size=g)
        return q

    groups, warnings = awq_scale_(sm, names, batches, quantizer_of)
    sm.meta["awq"] = awq_summary(groups)
    if groups:
        alphas = sorted(g.alpha for g in groups)
        warnings.append(f"awq: {len(groups)} layer groups scaled (alpha median {alphas[len(alphas) // 2]:.2f})")
    return warnings


def prepare_float(sm, cfg: WeightOnlyConfig, data) -> list[str]:
    """The float re-parametrisations of cfg alone (rotation, AWQ scaling with cfg's base grid for
    every layer): mixed precision runs them once before its search, then quantizes with
    rotate=False, awq=False."""
    _, _, body = _weight_only_layers(sm, cfg)
    names = {n for n, _ in body}
    if cfg.rotate:
        return _rotate(sm, names, cfg.rotate_seed)
    if cfg.awq:
        base = (cfg.bits, cfg.group_size, cfg.float_zeros)
        return _awq(sm, cfg, names, lambda n: base, _awq_batches(sm, cfg, data))
    return []


def _rotate(sm, names: set[str], seed: int = 0) -> list[str]:
    """Hadamard rotation (rotation.py), the down projections in `names` with their run-time
    rotation; records the rotated modules so a reload rebuilds them, and meta["rotation"]."""
    model = sm.model
    downs = {id(li.ffn.down) for li in get_adapter(model).layers(model)}
    online = {n for n, m in model.named_modules() if id(m) in downs and n in names}
    info = rotate_(sm, online, seed)
    for n, m in model.named_modules():
        if isinstance(m, RotatedLinear):
            _record(sm, n, {"type": "rotated_linear", "in": m.in_features, "out": m.out_features,
                            "bias": m.bias is not None, "input_rotation": m.input_rotation.spec()})
        elif isinstance(m, RotatedNorm):
            _record(sm, n, {"type": "rotated_norm", "rotation": m.rotation.spec()})
    sm.meta["rotation"] = info
    out = [f"rotate: residual stream ({info['residual']} {info['hidden']}), v -> o of {info['layers']} layers and "
           f"the input of {info['down_online']} down projections rotated"]
    if info["down_without"]:
        out.append(f"rotate: {len(info['down_without'])} down projections have no Hadamard of their input size; "
                   "their input is not rotated")
    return out


def _pattern_layers(sm, patterns, names: set[str], field: str, warnings: list[str]) -> set[str]:
    """The layers of `names` that `patterns` select; warns about patterns that select none."""
    picked, unmatched = set(), []
    for p in patterns:
        hit = {n for n, _ in select_modules(sm.model, [p])} & names
        picked |= hit
        if not hit:
            unmatched.append(p)
    if unmatched:
        warnings.append(f"{field} matched no quantized layer: {', '.join(unmatched)}")
    return picked


def _group_quantize(sm, name: str, mod: nn.Module, cfg: WeightOnlyConfig, H,
                    layer: tuple[int, int, bool] | None = None) -> None:
    """Swap `name` for a GroupQuantLinear: GPTQ when a Hessian H is given, else round-to-nearest.
    layer = (bits, group size, float zeros) overrides cfg's (int8_targets, fine_targets)."""
    bits, group_size, float_zeros = layer or (cfg.bits, cfg.group_size, cfg.float_zeros)
    w = linear_weight(mod).float()
    gs = resolve_group_size(w.shape[1], None if group_size == -1 else group_size)
    if H is not None:
        r = gptq_quantize(w, H, bits=bits, group_size=gs, damp=cfg.damp,
                          act_order=cfg.act_order, symmetric=cfg.symmetric and not float_zeros, clip=cfg.clip,
                          float_zero=float_zeros)
        q, scales, zeros = r.q, r.scales, r.zeros
        if cfg.refit:
            scales, zeros, _ = refit_gptq(w, H, q, scales, zeros, gs, cfg.damp)
        for _ in range(cfg.cd_passes):  # codes, then (refit) scales, each exact given the other
            q, _ = coordinate_descent(w, H, q, scales, zeros, gs, bits, cfg.damp)
            if cfg.refit:
                scales, zeros, _ = refit_gptq(w, H, q, scales, zeros, gs, cfg.damp)
    else:
        q, scales, zeros = quantize_groupwise(w, bits, gs, cfg.symmetric and not float_zeros, cfg.clip, float_zeros)
    new = GroupQuantLinear.from_codes(mod, q, scales, zeros, bits, gs)
    _set_module(sm.model, name, new)
    info = {"type": "group_linear", "in": new.in_features, "out": new.out_features, "bias": new.bias is not None,
            "bits": bits, "group_size": gs, "float_zeros": new.float_zeros}
    if new.input_rotation is not None:
        info["input_rotation"] = new.input_rotation.spec()
    _record(sm, name, info)


def _hessian_collector():
    """({name: HessianAccumulator}, observe(name, x, raw)). Layers fed the very same tensor
    (q/k/v, gate/up) share one accumulator, so X^T X is computed once for them. `observe.seen`
    maps id(input tensor) -> (accumulator, tensor); holding the tensor keeps its memory from
    being reused by a later input while the entry exists - clear it between passes."""
    hs: dict[str, HessianAccumulator] = {}
    seen: dict[int, tuple[HessianAccumulator, torch.Tensor]] = {}

    def observe(name, x, raw):
        hit = seen.get(id(raw))
        if name not in hs:
            hs[name] = hit[0] if hit is not None and hit[1] is raw else HessianAccumulator(x.shape[-1])
        acc = hs[name]
        if hit is None or hit[1] is not raw or hit[0] is not acc:
            seen[id(raw)] = (acc, raw)
            acc.add(x)

    observe.seen = seen
    return hs, observe


def _hessians(sm, body, batches) -> dict[str, HessianAccumulator]:
    """X^T X of each layer's input over the calibration batches, in one pass of the float model."""
    hs, observe = _hessian_collector()
    for enc in tqdm(batches, desc="gptq calibration", leave=False):
        observe.seen.clear()
        observe_inputs(sm, body, [enc], lambda n, x: None, "", consume_raw=observe)
    observe.seen.clear()
    return hs


# ------------------------------------------------------------------ restore on load


def restore(model: nn.Module, info: dict) -> None:
    """Rebuild quantized module shells (right shapes, empty) so saved tensors load into them.
    Tied heads come last: they point at the restored embedding module."""
    items = sorted(info.items(), key=lambda kv: kv[1]["type"] == "int8_tied_head")
    for name, d in items:
        t = d["type"]
        if t == "int8_linear":
            new = Int8Linear(d["in"], d["out"], d["bias"], act=d["act"], smooth=d.get("smooth", False))
        elif t == "smoothed_linear":
            new = SmoothedLinear(d["in"], d["out"], d["bias"])
        elif t == "group_linear":
            new = GroupQuantLinear(d["in"], d["out"], d["bias"], d["bits"], d["group_size"],
                                   float_zeros=d.get("float_zeros", False))
            if d.get("input_rotation"):
                new.input_rotation = Rotation(**d["input_rotation"])
        elif t == "rotated_linear":
            new = RotatedLinear(d["in"], d["out"], d["bias"], Rotation(**d["input_rotation"]))
        elif t == "rotated_norm":
            new = RotatedNorm(model.get_submodule(name), Rotation(**d["rotation"]))
        elif t == "int8_tied_head":
            new = Int8TiedHead(model.get_submodule(d["embedding"]))
        elif t == "int8_embedding":
            new = Int8Embedding(d["num"], d["dim"], d.get("padding_idx"))
            for alias in d.get("aliases", []):
                _set_module(model, alias, new)
        else:
            raise ValueError(f"unknown quantized module type {t!r} in slimformer.json")
        _set_module(model, name, new)
