"""The linear layers of a Transformer layer by role (q, k, v, qkv, o, gate, up, down; cross-attention
as x_q, ...), read from the adapter: how the family picks attention or FFN layers and pairs the
same kind of weight across layers without matching module names."""
from __future__ import annotations

from torch import nn

ATTENTION = ("q", "k", "v", "qkv", "o")
FFN = ("gate", "up", "down")
ROLES = ATTENTION + FFN
PARTS = {"all": ROLES, "attention": ATTENTION, "ffn": FFN}


def role_modules(li) -> dict[str, nn.Module]:
    """{role: module} of one adapter LayerInfo."""
    out = {}
    for prefix, a in (("", li.attention), ("x_", li.cross_attention)):
        if a is not None:
            for r in ATTENTION:
                m = getattr(a, r, None)
                if m is not None:
                    out[prefix + r] = m
    for r in FFN:
        m = getattr(li.ffn, r, None)
        if m is not None:
            out[r] = m
    return out
