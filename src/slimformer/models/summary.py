"""`slimformer inspect`: architecture, per-module parameters and bytes, heads, FFN sizes."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn


def _tensor_bytes(mod: nn.Module) -> tuple[int, int]:
    """(parameters, bytes of all tensors); tied tensors (same storage) are counted once."""
    params = sum(p.numel() for p in mod.parameters())
    seen, nbytes = set(), 0
    for t in mod.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            nbytes += t.numel() * t.element_size()
    return params, nbytes


def summarize(sm) -> dict:
    """A plain-data description of the model (rendered as tables by the CLI)."""
    from ..adapters import get_adapter

    model = sm.model
    adapter = get_adapter(model)
    cfg = model.config
    total_p, total_b = _tensor_bytes(model)
    groups: "OrderedDict[str, list]" = OrderedDict()
    for name, child in model.named_children():
        for sub, g in ([(name, child)] if not list(child.named_children()) else
                       [(f"{name}.{n}", c) for n, c in child.named_children()]):
            p, b = _tensor_bytes(g)
            if p or b:
                groups[sub] = [type(g).__name__, p, b]
    layers = []
    for li in adapter.layers(model):
        a = li.attention
        layers.append({
            "stack": li.stack, "index": li.index, "heads": a.num_heads, "kv_heads": a.num_kv_heads,
            "head_dim": a.head_dim, "ffn": li.ffn.intermediate_size, "gated": li.ffn.gate is not None,
            "cross_attention": li.cross_attention is not None,
            "params": _tensor_bytes(li.module)[0], "bytes": _tensor_bytes(li.module)[1],
        })
    return {
        "source": sm.source,
        "kind": sm.kind,
        "architecture": (getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        "model_type": cfg.model_type,
        "family": adapter.name,
        "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "d_model", None)),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "params": sm.num_params(),
        "bytes_in_memory": total_b,
        "pooling": None if sm.pooling is None else sm.pooling.__dict__,
        "modules": [{"name": k, "type": v[0], "params": v[1], "bytes": v[2]} for k, v in groups.items()],
        "layers": layers,
    }
