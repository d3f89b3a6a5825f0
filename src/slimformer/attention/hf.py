"""Swapping an attention implementation into a transformers model by name.

Each (implementation, options) pair is registered once in transformers' `AttentionInterface`
under its own key (with the padding-mask builder FlashAttention uses, so the kernels get a
(B, S) key mask instead of a materialised (B, 1, T, S) one) and the model's configs are pointed
at that key. Models whose attention does not dispatch through that registry are refused.
"""
from __future__ import annotations

import hashlib
import json

import torch

from ..adapters import get_adapter
from ..core.errors import ConfigError, UnsupportedArchitectureError
from .registry import ATTENTION, check_options

PREFIX = "slimformer_"


def key_mask_from(attention_mask, s: int):
    """(B, S) bool key mask (True = real token) from what transformers passes, or None."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 4:                  # (B, 1, T, S): a key is real if any query may see it
        m = m.any(dim=-2)[:, 0] if m.dtype == torch.bool else (m > torch.finfo(m.dtype).min / 2).any(dim=-2)[:, 0]
    m = m[:, -s:].bool()
    return None if bool(m.all()) else m


def _hf_function(name: str, options: dict):
    fn = ATTENTION.get(name).fn
    full = ATTENTION.get("sdpa").fn

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", False)) if causal is None else bool(causal)
        # cross-attention keys are another sequence: positions do not line up, so it stays full
        f = full if getattr(module, "is_cross_attention", False) else fn
        out = f(query, key, value, key_mask_from(attention_mask, key.shape[2]), causal, scaling,
                **({} if f is full else options))
        return out.transpose(1, 2).contiguous(), None                             # (B, T, H, D)

    return attention


def registered_key(name: str, options: dict) -> str:
    """Register (once) and return the AttentionInterface key for this implementation + options."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    ATTENTION.get(name)
    options = check_options(name, options)
    tag = hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8] if options else ""
    key = f"{PREFIX}{name}" + (f"_{tag}" if tag else "")
    if key not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(key, _hf_function(name, options))
        ALL_MASK_ATTENTION_FUNCTIONS.register(key, flash_attention_mask)
    return key


def _configs(model):
    seen = []
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and all(c is not x for x in seen):
            seen.append(c)
            for sub in ("text_config", "encoder", "decoder"):
                sc = getattr(c, sub, None)
                if hasattr(sc, "_attn_implementation") and all(sc is not x for x in seen):
                    seen.append(sc)
    return seen


def set_attention_(model, name: str, **options) -> str:
    """Run `model` (a SlimModel or a transformers model) with attention implementation `name`
    (see `slimformer.attention.ATTENTION`; `options` are the implementation's keywords, e.g.
    window=256). In place; returns the transformers key it registered. Recorded in the model's
    metadata, so a saved model reloads with it."""
    hf = getattr(model, "model", model)
    adapter = get_adapter(hf)
    impl = ATTENTION.get(name)
    if not adapter.swappable_attention(hf):
        raise UnsupportedArchitectureError(
            f"{type(hf).__name__} computes attention itself, so {name!r} cannot be swapped in; attention "
            "implementations apply to models that dispatch through transformers' AttentionInterface "
            "(BERT/MiniLM, Llama/SmolLM2, GPT-2, ... and slimformer's reference Transformer)")
    if not impl.causal and _is_causal_model(hf):
        raise ConfigError(f"attention {name!r} is bidirectional only and {type(hf).__name__} is a causal model; "
                          "accepted for causal models: " + ", ".join(n for n in ATTENTION.names() if ATTENTION.get(n).causal))
    limit = adapter.max_positions(hf)
    for opt in ("window",):
        w = options.get(opt)
        if w is not None and limit is not None and isinstance(w, int) and w > limit:
            raise ConfigError(f"{opt}={w} is larger than the model's {limit} positions; accepted: 1..{limit}")
    key = registered_key(name, options)
    for c in _configs(hf):
        c._attn_implementation = key
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta["attention"] = {"impl": name, "options": dict(options)}
    return key


def _is_causal_model(hf) -> bool:
    """A model that generates has causal self-attention somewhere (decoder LMs, encoder-decoders)."""
    return bool(getattr(hf, "can_generate", lambda: False)()) or bool(getattr(hf.config, "is_decoder", False))


def current_attention(model) -> dict:
    """{"impl": name, "options": {...}} of the model's attention (transformers' own names as is)."""
    hf = getattr(model, "model", model)
    key = getattr(hf.config, "_attn_implementation", None) or "eager"
    meta = getattr(model, "meta", None)
    if key.startswith(PREFIX) and isinstance(meta, dict) and "attention" in meta:
        return dict(meta["attention"])
    return {"impl": key, "options": {}}


def _observed_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention that also tells the module's KV-cache layer how much attention each
    cached key received (summed over queries and over the query heads sharing it): H2O."""
    from .kernels import _repeat_kv, dense_mask

    b, h, t, d = query.shape
    s, hk = key.shape[2], key.shape[1]
    causal = bool(getattr(module, "is_causal", False))
    scores = (query @ _repeat_kv(key, h).transpose(-1, -2)).float() * (scaling or d ** -0.5)
    allowed = dense_mask(t, s, key_mask_from(attention_mask, s), causal, query.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)                            # (B, H, T, S)
    layer = getattr(module, "_slimformer_kv_layer", None)
    if layer is not None:
        layer.observe(probs.sum(2).view(b, hk, h // hk, s).sum(2))               # (B, Hkv, S)
    out = probs.to(value.dtype) @ _repeat_kv(value, h)
    return out.transpose(1, 2).contiguous(), None


def observe_attention_(model, modules, layers) -> str:
    """Point each attention module at its cache layer and switch to the observing eager function."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    key = f"{PREFIX}observed_eager"
    if key not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(key, _observed_eager)
        ALL_MASK_ATTENTION_FUNCTIONS.register(key, flash_attention_mask)
    hf = getattr(model, "model", model)
    for m, layer in zip(modules, layers):
        m._slimformer_kv_layer = layer
    for c in _configs(hf):
        c._attn_implementation = key
    return key
