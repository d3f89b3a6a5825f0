"""Grouped-query / multi-query attention by conversion (Ainslie et al., 2023): the key and value
heads of each group are mean-pooled into one, so the key/value projections (and a decoder's KV
cache) shrink by heads / kv_heads. A short recovery (the `distill` step) usually follows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import get_adapter
from ..core.config import Applied, MethodConfig, Traits, register_method
from ..core.errors import ConfigError, UnsupportedArchitectureError
from ..models.hooks import register_module_type
from ..models.surgery import set_module


def pool_heads(weight: torch.Tensor, bias, heads: int, groups: int, head_dim: int):
    """(heads * head_dim, in) -> (groups * head_dim, in): the mean of each group's heads (and biases)."""
    w = weight.view(groups, heads // groups, head_dim, -1).mean(1).reshape(groups * head_dim, -1)
    b = None if bias is None else bias.view(groups, heads // groups, head_dim).mean(1).reshape(-1)
    return w, b


@dataclass(frozen=True)
class GQAConfig(MethodConfig):
    """kv_heads: key/value heads to keep in every self-attention layer (1 = multi-query); must
    divide the current count. Llama-family configs record it natively; for BERT-family encoders
    the smaller projections are recorded with the saved model and slimformer's attention
    function repeats them."""

    method = "gqa"
    kv_heads: int = 1

    def validate(self) -> None:
        if not isinstance(self.kv_heads, int) or self.kv_heads < 1:
            raise ConfigError(f"GQAConfig.kv_heads={self.kv_heads!r}; accepted: an integer >= 1")


@register_method(GQAConfig, traits=Traits(changes_shapes=True))
def to_gqa_(model, cfg: GQAConfig, run=None) -> Applied:
    hf = getattr(model, "model", model)
    adapter = get_adapter(hf)
    names = {id(m): n for n, m in hf.named_modules()}
    layers = [li for li in adapter.layers(hf)]
    for li in layers:
        a = li.attention
        if a.qkv is not None or a.k is None:
            raise UnsupportedArchitectureError(f"{type(hf).__name__} fuses q, k and v in one projection; GQA "
                                               "conversion takes separate k and v (BERT, Llama, T5, the reference Transformer)")
        if a.num_kv_heads % cfg.kv_heads:
            divisors = [d for d in range(1, a.num_kv_heads + 1) if a.num_kv_heads % d == 0]
            raise ConfigError(f"{a.num_kv_heads} key/value heads cannot be grouped into {cfg.kv_heads}; accepted: "
                              f"{', '.join(map(str, divisors))}")
    if not adapter.kv_heads_in_config and not adapter.swappable_attention(hf):
        raise UnsupportedArchitectureError(f"{type(hf).__name__} computes attention itself, so it cannot run fewer "
                                           "key/value heads than query heads")
    before = sum(p.numel() for p in hf.parameters())
    records = {}
    for li in layers:
        a = li.attention
        for proj in (a.k, a.v):
            w, b = pool_heads(proj.weight.data, proj.bias.data if proj.bias is not None else None,
                              a.num_kv_heads, cfg.kv_heads, a.head_dim)
            new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
            new.weight.data.copy_(w)
            if b is not None:
                new.bias.data.copy_(b)
            set_module(hf, names[id(proj)], new)
            records[names[id(proj)]] = {"type": "linear", "in": w.shape[1], "out": w.shape[0], "bias": b is not None}
    if adapter.kv_heads_in_config:
        adapter.fix_config(hf)
    else:
        from .hf import set_attention_

        attn = getattr(hf.config, "_attn_implementation", None) or "eager"
        if not attn.startswith("slimformer_"):
            set_attention_(model, "sdpa")      # repeats the key/value heads for the query heads
        if isinstance(getattr(model, "meta", None), dict):
            model.meta.setdefault("modules", {})["gqa"] = records
    after = sum(p.numel() for p in hf.parameters())
    return Applied([f"gqa: {layers[0].attention.num_kv_heads} -> {cfg.kv_heads} key/value heads per layer"],
                   {"kv_heads_before": layers[0].attention.num_kv_heads, "kv_heads": cfg.kv_heads,
                    "params_removed": before - after})


def _build_linear(model, name, info):
    return nn.Linear(info["in"], info["out"], bias=info["bias"])


register_module_type("linear", _build_linear)
