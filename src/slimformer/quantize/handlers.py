"""Handlers: walk the model, swap modules, record what was done. The math is elsewhere."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from ..core.targets import select_modules
from .configs import Int8DynamicConfig, WeightOnlyConfig
from .gptq import HessianAccumulator, gptq_quantize
from .modules import GroupQuantLinear, Int8Embedding, Int8Linear, linear_weight
from .qmath import quantize_groupwise, resolve_group_size

META_KEY = "quantization"


def _is_linear(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _linear_targets(sm, cfg, include_head: bool) -> list[tuple[str, nn.Module]]:
    """Linear layers to quantize: cfg.targets (default: every Linear/Conv1D) minus cfg.ignore,
    minus the LM / classification head unless include_head."""
    from transformers.pytorch_utils import Conv1D

    model = sm.model
    picked = [(n, m) for n, m in select_modules(model, cfg.targets, cfg.ignore, default=(nn.Linear, Conv1D))
              if _is_linear(m)]
    head = get_adapter(model).lm_head(model)
    head_name = _names(model).get(id(head)) if head is not None else None
    return [(n, m) for n, m in picked if include_head or n != head_name]


def _record(sm, name: str, info: dict) -> None:
    sm.meta.setdefault("modules", {}).setdefault(META_KEY, {})[name] = info
    sm.model.config.slimformer_quantization = sm.meta["modules"][META_KEY]


def _quantize_embedding(sm) -> list[str]:
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
    if head is not None and getattr(head, "weight", None) is emb.weight:  # a float head tied to it
        _replace_linear(sm, _names(model)[id(head)], head, act_bits=None)
    new = Int8Embedding.from_float(emb)
    for n, _ in sharing:
        _set_module(model, n, new)
    _record(sm, sharing[0][0], {"type": "int8_embedding", "num": emb.num_embeddings, "dim": emb.embedding_dim,
                                "padding_idx": emb.padding_idx, "aliases": [n for n, _ in sharing[1:]]})
    return []


def _replace_linear(sm, name: str, mod: nn.Module, act_bits: int | None) -> None:
    """Swap in an Int8Linear (act_bits 8: W8A8 dynamic; None: int8 weight-only). Replacing a
    tied head gives it its own (quantized) weight; the config's tie flag stays as it was, so a
    reload builds the same float model first and then these modules."""
    new = Int8Linear.from_float(mod, act_bits=act_bits)
    _set_module(sm.model, name, new)
    _record(sm, name, {"type": "int8_linear" if act_bits else "int8_weight_linear", "in": new.in_features,
                       "out": new.out_features, "bias": new.bias is not None})


def int8_dynamic(sm, cfg: Int8DynamicConfig, data) -> list[str]:
    warnings = []
    targets = _linear_targets(sm, cfg, include_head=True)
    for name, mod in tqdm(targets, desc="int8", leave=False):
        _replace_linear(sm, name, mod, act_bits=8)
    if cfg.embeddings:
        warnings += _quantize_embedding(sm)
    if sm.kind == "classification":
        warnings.append("classification head quantized too; add it to `ignore` to keep it float")
    return warnings


# ------------------------------------------------------------------ weight-only (RTN / GPTQ)


def _calibration_inputs(sm, texts: list[str], seq_len: int, max_seqs: int = 128) -> list[dict]:
    """Token batches for calibration: LMs get the texts joined and cut into seq_len chunks."""
    tok = sm.tokenizer
    if sm.kind == "causal-lm":
        sep = tok.eos_token or "\n"
        ids = tok(f"{sep}".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        n = max(1, min(max_seqs, len(ids) // seq_len))
        return [{"input_ids": ids[i * seq_len:(i + 1) * seq_len].unsqueeze(0)} for i in range(n)] if len(ids) >= seq_len \
            else [{"input_ids": ids.unsqueeze(0)}]
    out = []
    for i in range(0, min(len(texts), max_seqs), 8):
        enc = sm.tokenize(texts[i:i + 8], seq_len)
        if sm.kind == "seq2seq-lm":
            enc["decoder_input_ids"] = enc["input_ids"]
        out.append(enc)
    return out


@torch.inference_mode()
def _collect_hessians(sm, targets, batches) -> dict[str, HessianAccumulator]:
    """One pass of the float model over the calibration batches, accumulating X^T X per layer
    input (all layers at once: fast, and close to sequential GPTQ for small models)."""
    hs, hooks = {}, []
    for name, mod in targets:
        in_f = linear_weight(mod).shape[1]
        hs[name] = HessianAccumulator(in_f)

        def hook(m, args, _out, acc=hs[name]):
            acc.add(args[0].detach().float())

        hooks.append(mod.register_forward_hook(hook))
    try:
        for enc in tqdm(batches, desc="gptq calibration", leave=False):
            sm.model(**enc, **({"use_cache": False} if sm.kind != "embedding" else {}))
    finally:
        for h in hooks:
            h.remove()
    return hs


def weight_only(sm, cfg: WeightOnlyConfig, data) -> list[str]:
    warnings = []
    targets = _linear_targets(sm, cfg, include_head=cfg.lm_head)
    head = get_adapter(sm.model).lm_head(sm.model)
    head_name = _names(sm.model).get(id(head)) if head is not None else None
    hs = {}
    if cfg.algorithm == "gptq":
        if not data:
            raise ValueError("GPTQ needs calibration data (texts); none was given")
        batches = _calibration_inputs(sm, list(data), cfg.calibration_tokens)
        hs = _collect_hessians(sm, [(n, m) for n, m in targets if n != head_name], batches)
    for name, mod in tqdm(targets, desc=f"int{cfg.bits} {cfg.algorithm}", leave=False):
        w = linear_weight(mod).float()
        if name == head_name:  # the head: int8 per channel weight-only (vocab-sized; 4 bits hurt)
            _replace_linear(sm, name, mod, act_bits=None)
            continue
        try:
            gs = resolve_group_size(w.shape[1], None if cfg.group_size == -1 else cfg.group_size)
        except ValueError:
            gs = w.shape[1]
            warnings.append(f"{name}: in_features {w.shape[1]} not divisible by {cfg.group_size}; one group per row")
        if cfg.algorithm == "gptq":
            r = gptq_quantize(w, hs.pop(name).H, bits=cfg.bits, group_size=gs, damp=cfg.damp,
                              act_order=cfg.act_order, symmetric=cfg.symmetric)
            q, scales, zeros = r.q, r.scales, r.zeros
        else:
            q, scales, zeros = quantize_groupwise(w, cfg.bits, gs, cfg.symmetric)
        new = GroupQuantLinear.from_codes(mod, q, scales, zeros, cfg.bits, gs)
        _set_module(sm.model, name, new)
        _record(sm, name, {"type": "group_linear", "in": new.in_features, "out": new.out_features,
                           "bias": new.bias is not None, "bits": cfg.bits, "group_size": gs})
    if cfg.embeddings:
        warnings += _quantize_embedding(sm)
    return warnings


# ------------------------------------------------------------------ restore on load


def restore(model: nn.Module, info: dict) -> None:
    """Rebuild quantized module shells (right shapes, empty) so saved tensors load into them."""
    for name, d in info.items():
        t = d["type"]
        if t == "int8_linear":
            new = Int8Linear(d["in"], d["out"], d["bias"])
        elif t == "int8_weight_linear":
            new = Int8Linear(d["in"], d["out"], d["bias"], act_bits=None)
        elif t == "group_linear":
            new = GroupQuantLinear(d["in"], d["out"], d["bias"], d["bits"], d["group_size"])
        elif t == "int8_embedding":
            new = Int8Embedding(d["num"], d["dim"], d.get("padding_idx"))
            for alias in d.get("aliases", []):
                _set_module(model, alias, new)
        else:
            raise ValueError(f"unknown quantized module type {t!r} in slimformer.json")
        _set_module(model, name, new)
