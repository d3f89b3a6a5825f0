"""Weight-only handlers: group-wise int4/int8 (round-to-nearest or GPTQ), and the float steps
that go in front of it (AWQ scaling, Hadamard rotation). The math is in gptq.py, qmath.py,
awq.py and rotation.py."""
from __future__ import annotations

from collections import Counter

from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..core.config import Applied, Traits, register_method
from ..core.errors import ConfigError, DataError
from ..core.targets import select_modules
from ..data import model_batches
from ..models.sequential import by_layer, with_hessians
from ..models.streaming import materialized
from ..models.surgery import set_module as _set_module
from .awq import awq_scale_
from .awq import summary as awq_summary
from .configs import AwqConfig, RotateConfig, WeightOnlyConfig
from .gptq import coordinate_descent, gptq_quantize, quadratic_error, refit_gptq
from .handlers import (_is_linear, _record, _replace_linear, embedding_name, head_name, linear_targets,
                       quantize_embedding, tied_head)
from .modules import GroupQuantLinear, linear_weight
from ..core.qmath import dequantize_groupwise, quantize_groupwise, resolve_group_size
from .rotation import RotatedLinear, RotatedNorm, rotate_


@register_method(WeightOnlyConfig, traits=Traits(needs_calibration=True, layer_local=True))
def weight_only(sm, cfg: WeightOnlyConfig, run) -> Applied:
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

    errors: dict[str, float] = {}
    if cfg.algorithm == "gptq":
        data = run.calibration
        if not data:
            raise DataError("GPTQ needs calibration data (texts); none was given (pass data=..., or --data PATH)")
        batches = model_batches(sm, list(data), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)
        def quantize_one(name, mod, H):
            errors[name] = _group_quantize(sm, name, mod, cfg, H, layer_of(name))

        warnings += with_hessians(sm, body, batches, quantize_one, cfg.sequential, cfg.true_sequential, name="gptq")
    else:  # one layer at a time (a streamed model reads each layer, then writes it out)
        for name, mod in by_layer(sm, body, f"int{cfg.bits} rtn"):
            _group_quantize(sm, name, mod, cfg, None, layer_of(name))
    head_in = head is not None and any(n == head for n, _ in targets)
    if head_in and not (cfg.embeddings and tied):
        # the head: int8 per channel weight-only (vocab-sized; 4 bits hurt)
        with materialized(sm, [head]):
            _replace_linear(sm, head, sm.model.get_submodule(head), act=None)
    if cfg.embeddings:
        # int8 per row; a head tied to the table reads the same int8 table (stored once)
        with materialized(sm, [embedding_name(sm)] + ([head] if tied and head_in else [])):
            warnings += quantize_embedding(sm)
            if tied and head_in and _is_linear(sm.model.get_submodule(head)):
                _replace_linear(sm, head, sm.model.get_submodule(head), act=None)  # the table stayed float
    if wide:
        n8 = sum(1 for n, _ in body if n in wide)
        warnings.append(f"mixed int4/int8: {n8} of {len(body)} layers at 8 bits")
    if fine:
        nf = sum(1 for n, _ in body if n in fine)
        warnings.append(f"mixed group sizes: {nf} of {len(body)} layers at group {cfg.fine_group_size} (float zeros)")
    formats = Counter("int{}-g{}{}".format(*layer_of(n)[:2], "-fz" if layer_of(n)[2] else "") for n in names)
    details = {"layers": len(body), "formats": dict(formats), "int8_layers": sorted(wide), "fine_layers": sorted(fine)}
    if errors:
        details["gptq_relative_error"] = {k: round(v, 6) for k, v in errors.items() if v is not None}
    return Applied(warnings, details)


def _weight_only_layers(sm, cfg: WeightOnlyConfig):
    """(targets, LM head name, body): the Linear layers cfg quantizes, and those of them other
    than the head (the body is quantized group-wise; the head int8)."""
    targets = linear_targets(sm, cfg, include_head=cfg.lm_head)
    head = head_name(sm)
    return targets, head, [(n, m) for n, m in targets if n != head]


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
                    layer: tuple[int, int, bool] | None = None) -> float | None:
    """Swap `name` for a GroupQuantLinear: GPTQ when a Hessian H is given, else round-to-nearest.
    layer = (bits, group size, float zeros) overrides cfg's (int8_targets, fine_targets).
    Returns GPTQ's relative layer-output error on the calibration Hessian (None for RTN)."""
    bits, group_size, float_zeros = layer or (cfg.bits, cfg.group_size, cfg.float_zeros)
    w = linear_weight(mod).float()
    gs = resolve_group_size(w.shape[1], None if group_size == -1 else group_size)
    err = None
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
        err = _relative_error(w, dequantize_groupwise(q, scales, zeros, group_size=gs), H)
    else:
        q, scales, zeros = quantize_groupwise(w, bits, gs, cfg.symmetric and not float_zeros, cfg.clip, float_zeros)
    new = GroupQuantLinear.from_codes(mod, q, scales, zeros, bits, gs)
    _set_module(sm.model, name, new)
    info = {"type": "group_linear", "in": new.in_features, "out": new.out_features, "bias": new.bias is not None,
            "bits": bits, "group_size": gs, "float_zeros": new.float_zeros}
    if new.input_rotation is not None:
        info["input_rotation"] = new.input_rotation.spec()
    _record(sm, name, info)
    return err


def _relative_error(w, wq, H) -> float:
    """tr(D H D^T) / tr(W H W^T), D = W - Q(W): the layer-output error relative to its output."""
    den = float(quadratic_error(w, None, H).sum())
    return float(quadratic_error(w, wq, H).sum()) / den if den > 0 else 0.0


# ------------------------------------------------------------------ float steps: AWQ, rotation


@register_method(AwqConfig, traits=Traits(needs_calibration=True))
def awq_step(sm, cfg: AwqConfig, run) -> Applied:
    """Fold AWQ scales into the float model (awq.py), each group searched with the round-to-nearest
    quantizer of the weight-only grid that follows."""
    data = run.calibration
    if not data:
        raise DataError("awq searches activation-aware scales on calibration data; no texts were given "
                        "(pass data=..., or --data PATH on the command line)")
    body = [(n, m) for n, m in linear_targets(sm, cfg, include_head=False)]
    names = {n for n, _ in body}
    sym = cfg.symmetric and not cfg.float_zeros

    def quantizer_of(name):
        def q(w):
            g = resolve_group_size(w.shape[1], None if cfg.group_size == -1 else cfg.group_size)
            return dequantize_groupwise(*quantize_groupwise(w, cfg.bits, g, sym, False, cfg.float_zeros), group_size=g)
        return q

    batches = model_batches(sm, list(data), cfg.calibration_tokens, max_seqs=cfg.calibration_samples)
    groups, warnings = awq_scale_(sm, names, batches, quantizer_of)
    if groups:
        alphas = sorted(g.alpha for g in groups)
        warnings.append(f"awq: {len(groups)} layer groups scaled (alpha median {alphas[len(alphas) // 2]:.2f})")
    return Applied(warnings, awq_summary(groups))


@register_method(RotateConfig, traits=Traits(portable=False))
def rotate_step(sm, cfg: RotateConfig, run) -> Applied:
    """Hadamard rotation (rotation.py) with a run-time rotation of the down projections' inputs;
    records the rotated modules so a reload rebuilds them."""
    model = sm.model
    downs = {id(li.ffn.down) for li in get_adapter(model).layers(model)}
    picked = {n for n, _ in linear_targets(sm, cfg, include_head=False)}
    online = {n for n, m in model.named_modules() if id(m) in downs and n in picked}
    info = rotate_(sm, online, cfg.seed)
    for n, m in model.named_modules():
        if isinstance(m, RotatedLinear):
            _record(sm, n, {"type": "rotated_linear", "in": m.in_features, "out": m.out_features,
                            "bias": m.bias is not None, "input_rotation": m.input_rotation.spec()})
        elif isinstance(m, RotatedNorm):
            _record(sm, n, {"type": "rotated_norm", "rotation": m.rotation.spec()})
    out = [f"rotate: residual stream ({info['residual']} {info['hidden']}), v -> o of {info['layers']} layers and "
           f"the input of {info['down_online']} down projections rotated"]
    if info["down_without"]:
        out.append(f"rotate: {len(info['down_without'])} down projections have no Hadamard of their input size; "
                   "their input is not rotated")
    return Applied(out, info)
