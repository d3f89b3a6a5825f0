"""The attention registry: every implementation under one name, with one signature (see
`kernels.py`), whether it can run causal (decoder) attention, and what it costs."""
from __future__ import annotations

import inspect
import typing
from typing import Callable

from ..core.errors import ConfigError
from ..core.registry import Registry
from . import kernels


class AttentionImpl(typing.NamedTuple):
    fn: Callable
    causal: bool        # usable in decoders (causal masks, KV-cache decoding)
    summary: str


ATTENTION: Registry[AttentionImpl] = Registry("attention implementation")

for _name, _fn, _causal, _summary in (
    ("eager", kernels.eager, True, "the reference: full softmax attention, T x T"),
    ("sdpa", kernels.sdpa, True, "torch's fused kernel, exact, T x T time, low memory"),
    ("sliding_window", kernels.sliding_window, True, "local band of `window` keys (+ global tokens), T x window"),
    ("block_sparse", kernels.block_sparse, True, "BigBird: neighbour + global + random key blocks"),
    ("lsh", kernels.lsh, True, "Reformer: hashed buckets, chunked, several rounds"),
    ("linear", kernels.linear, True, "kernel feature maps (elu+1, Performer), O(T)"),
    ("nystrom", kernels.nystrom, False, "Nystromformer landmarks, T x landmarks (encoders)"),
    ("pooled", kernels.pooled, False, "keys/values averaged by a stride, T x T/stride (encoders)"),
):
    ATTENTION.register(_name, AttentionImpl(_fn, _causal, _summary))


def options_of(name: str) -> dict:
    """The keyword options an implementation accepts, with their defaults."""
    sig = inspect.signature(ATTENTION.get(name).fn)
    return {p.name: p.default for p in list(sig.parameters.values())[6:]}


def check_options(name: str, options: dict) -> dict:
    """Validate option names (values are checked by the kernel itself on first use)."""
    accepted = options_of(name)
    for key in options:
        if key not in accepted:
            raise ConfigError(f"attention {name!r} has no option {key!r}; accepted: "
                              f"{', '.join(accepted) or '(none)'}")
    return dict(options)
