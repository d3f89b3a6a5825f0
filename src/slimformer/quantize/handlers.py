"""Handlers: walk the model, swap modules, record what was done. The math is elsewhere."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..adapters.base import is_linear, linear_classes
from ..core.config import Applied, Traits, register_method
from ..core.targets import select_modules
from ..data import model_batches
from ..models.activations import input_absmax, observe_inputs
from ..models.surgery import module_names
from ..models.surgery import set_module as _set_module
from .configs import Int8DynamicConfig, Int8StaticConfig, SmoothQuantConfig
from .modules import Int8Embedding, Int8Linear, Int8TiedHead, SmoothedLinear
from .observers import RunningObserver
from .smoothquant import smoothing_scales

META_KEY = "quantization"
_is_linear = is_linear


def head_name(sm) -> str | None:
    head = get_adapter(sm.model).lm_head(sm.model)
    return module_names(sm.model).get(id(head)) if head is not None else None


def embedding_name(sm) -> str | None:
    emb = get_adapter(sm.model).embeddings(sm.model)
    return module_names(sm.model).get(id(emb)) if emb is not None else None


def linear_targets(sm, cfg, include_head: bool) -> list[tuple[str, nn.Module]]:
    """Linear layers to quantize: cfg.targets (default: every Linear/Conv1D) minus cfg.ignore,
    minus the LM head unless include_head."""
    picked = [(n, m) for n, m in select_modules(sm.model, cfg.targets, cfg.ignore, default=linear_classes())
              if is_linear(m)]
    head = head_name(sm)
    return [(n, m) for n, m in picked if include_head or n != head]


def _record(sm, name: str, info: dict) -> None:
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = info
    if getattr(sm.model, "config", None) is not None:
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
    if emb is None:
        return ["no token embedding table (a plain module): embeddings not quantized"]
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
        hname = module_names(model)[id(head)]
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


@register_method(Int8DynamicConfig, traits=Traits())
def int8_dynamic(sm, cfg: Int8DynamicConfig, run) -> Applied:
    targets = linear_targets(sm, cfg, include_head=True)
    for name, mod in tqdm(targets, desc="int8", leave=False):
        _replace_linear(sm, name, mod, act="token")
    warnings = quantize_embedding(sm) if cfg.embeddings else []
    return Applied(warnings, {"layers": len(targets), "embedding_int8": cfg.embeddings and not warnings})


@register_method(Int8StaticConfig, traits=Traits(needs_calibration=True))
def int8_static(sm, cfg: Int8StaticConfig, run) -> Applied:
    targets = linear_targets(sm, cfg, include_head=True)
    obs = {n: RunningObserver(cfg.observer, 8, True, None, max_samples=2**18,
                              **({"percentile": cfg.percentile} if cfg.observer == "percentile" else {}))
           for n, _ in targets}
    batches = model_batches(sm, list(run.calibration), cfg.calibration_tokens)
    smooth = {n: m.input_scale for n, m in targets if getattr(m, "input_scale", None) is not None}

    def consume(n, x):  # the quantizer sees the input after any SmoothQuant scaling
        obs[n].update(x * smooth[n] if n in smooth else x)

    observe_inputs(sm, targets, batches, consume, "int8 static calibration")
    scales = {}
    for name, mod in tqdm(targets, desc="int8 static", leave=False):
        scale, _ = obs[name].compute()
        scales[name] = float(scale)
        _replace_linear(sm, name, mod, act="static", per_channel=cfg.per_channel, act_scale=float(scale))
    warnings = quantize_embedding(sm) if cfg.embeddings else []
    return Applied(warnings, {"layers": len(targets), "activation_scale": scales})


@register_method(SmoothQuantConfig, traits=Traits(needs_calibration=True))
def smoothquant(sm, cfg: SmoothQuantConfig, run) -> Applied:
    """Per-channel smoothing of each Linear's input (x / s, W * s), s from calibration absmax.
    The scale is kept on the layer (`input_scale`) so it is exact for every architecture;
    a later int8 step quantizes the smoothed weight and keeps the scale."""
    targets = [(n, m) for n, m in linear_targets(sm, cfg, include_head=False) if isinstance(m, nn.Linear)]
    amax = input_absmax(sm, targets, model_batches(sm, list(run.calibration), 128), "smoothquant calibration")
    spread = {}
    for name, mod in targets:
        w = mod.weight.detach().float()
        s = smoothing_scales(amax[name], w.abs().amax(0), cfg.alpha)
        spread[name] = round(float(s.max() / s.min()), 3)
        new = SmoothedLinear(mod.in_features, mod.out_features, mod.bias is not None)
        with torch.no_grad():
            new.weight.copy_(w * s)
            new.input_scale.copy_(1.0 / s)
            if mod.bias is not None:
                new.bias.copy_(mod.bias)
        _set_module(sm.model, name, new)
        _record(sm, name, {"type": "smoothed_linear", "in": mod.in_features, "out": mod.out_features,
                           "bias": mod.bias is not None})
    return Applied([], {"layers": len(targets), "scale_spread": spread})
