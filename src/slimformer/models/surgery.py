"""Module surgery shared by every method family: swap a module, slice a linear layer, and the
structural changes (remove attention heads, FFN neurons, whole layers) that slice every module
they touch and fix the config through the adapter.

    set_module(model, "encoder.layer.0.output.dense", new)
    remove_heads_(model, {0: [1, 3]})           # layer 0 (adapter order) loses heads 1 and 3
    remove_ffn_neurons_(model, {2: keep_idx})   # layer 2 keeps these intermediate neurons
    remove_layers_(model, keep=[0, 2, 4])       # a single-stack model keeps three layers

Which modules a head or a neuron lives in comes from the adapter (`adapters/`), never from
module names here. Head indices are attention *units*: a head for multi-head attention, a
key/value head with the query heads that read it for grouped-query attention (GQA).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..adapters import get_adapter
from ..adapters.base import in_features, is_linear, linear_like, linear_weight, out_features, unwrap
from ..core.errors import ConfigError


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called `name` (dotted path) by `new`, under every name it has: a
    module shared across layers (weight sharing) stays shared."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child, None)
    setattr(parent, child, new)
    if isinstance(old, nn.Module) and getattr(model, SHARED_FLAG, False):
        for p in model.modules():
            for n, c in list(p.named_children()):
                if c is old:
                    setattr(p, n, new)


# set on a model holding modules shared under several names (weight sharing): only for such a
# model does set_module pay for the walk over every module
SHARED_FLAG = "_slimformer_shares_modules"


def mark_shared(model: nn.Module) -> None:
    """Note that `model` holds modules under several names (set_module then replaces them all)."""
    object.__setattr__(model, SHARED_FLAG, True)


def module_names(model: nn.Module) -> dict[int, str]:
    """{id(module): qualified name} (the first name of a module shared under several)."""
    return {id(m): n for n, m in model.named_modules()}


def replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` sits (every parent that holds it)."""
    found = False
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, name, new)
                found = True
    if not found:
        raise ValueError(f"replace_module: {type(old).__name__} is not inside the model")


def slice_linear(m: nn.Module, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> nn.Module:
    """A copy of Linear / Conv1D `m` keeping output rows `out_idx` and input columns `in_idx`."""
    if not is_linear(m):
        raise TypeError(f"slice_linear: {type(m).__name__} is not a float linear layer (quantized layers "
                        "cannot be sliced; change the structure before quantizing)")
    w = linear_weight(m)  # (out, in)
    out_idx = torch.arange(w.shape[0]) if out_idx is None else torch.as_tensor(out_idx, dtype=torch.long)
    in_idx = torch.arange(w.shape[1]) if in_idx is None else torch.as_tensor(in_idx, dtype=torch.long)
    b = m.bias.detach()[out_idx] if m.bias is not None else None
    return linear_like(m, w[out_idx][:, in_idx].clone(), b.clone() if b is not None else None)


def _heads_idx(heads: Iterable[int], head_dim: int) -> torch.Tensor:
    heads = list(heads)
    if not heads:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def _layers(model):
    return get_adapter(model).layers(model)


def _check_index(i: int, n: int, what: str) -> None:
    if not isinstance(i, int) or not 0 <= i < n:
        raise ConfigError(f"{what} {i!r} is out of range; accepted: 0..{n - 1}")


def remove_heads_(model: nn.Module, heads: dict[int, Iterable[int]], fix_config: bool = True) -> dict:
    """Remove attention units from self-attention: {layer index (adapter order): unit indices}.

    A unit is one head (multi-head attention) or one key/value head and its query group (GQA).
    q/k/v rows and o columns are sliced (GPT-2's fused c_attn too); a relative-position bias
    table shared by all layers (T5, MPNet) is sliced once and so needs the same units removed in
    every layer of its stack. At least one unit stays per layer. Returns {layer: units left}."""
    infos = _layers(model)
    hf = unwrap(model)
    shared: dict[int, tuple[nn.Module, tuple[int, ...]]] = {}
    left = {}
    for li_idx, drop in heads.items():
        _check_index(li_idx, len(infos), "layer")
        a = infos[li_idx].attention
        units = a.num_kv_heads
        drop = sorted({int(h) for h in drop})
        for h in drop:
            _check_index(h, units, f"head of layer {li_idx}")
        keep_units = [u for u in range(units) if u not in drop]
        if not keep_units:
            raise ConfigError(f"remove_heads_: layer {li_idx} would lose all of its {units} heads; keep at least one "
                              "(remove the layer instead)")
        if not drop:
            left[li_idx] = units
            continue
        group = a.num_heads // a.num_kv_heads
        q_heads = [u * group + g for u in keep_units for g in range(group)]
        q_keep = _heads_idx(q_heads, a.head_dim)
        kv_keep = _heads_idx(keep_units, a.head_dim)
        if a.qkv is not None:  # fused (GPT-2): rows [q | k | v]
            q, kv = a.fused_qkv_split[0], a.fused_qkv_split[1]
            rows = torch.cat([q_keep, q + kv_keep, q + kv + kv_keep])
            replace_module(hf, a.qkv, slice_linear(a.qkv, out_idx=rows))
        else:
            replace_module(hf, a.q, slice_linear(a.q, out_idx=q_keep))
            replace_module(hf, a.k, slice_linear(a.k, out_idx=kv_keep))
            replace_module(hf, a.v, slice_linear(a.v, out_idx=kv_keep))
        replace_module(hf, a.o, slice_linear(a.o, in_idx=q_keep))
        if a.rel_bias is not None:
            key = id(a.rel_bias)
            if key in shared and shared[key][1] != tuple(q_heads):
                raise ConfigError("remove_heads_: this model shares one relative-position bias table across "
                                  "layers (T5, MPNet); remove the same heads in every layer")
            shared[key] = (a.rel_bias, tuple(q_heads))
        left[li_idx] = len(keep_units)
    for bias, q_heads in shared.values():
        bias.weight = nn.Parameter(bias.weight.detach()[:, list(q_heads)].clone())
        bias.embedding_dim = len(q_heads)
    if fix_config:
        get_adapter(model).fix_config(model)
    return left


def remove_ffn_neurons_(model: nn.Module, keep: dict[int, Iterable[int]], fix_config: bool = True) -> dict:
    """Keep only the given intermediate neurons of each layer's FFN: {layer index: kept indices}.
    up (and gate) lose rows, down loses columns. Returns {layer: intermediate size}."""
    infos = _layers(model)
    hf = unwrap(model)
    sizes = {}
    for li_idx, idx in keep.items():
        _check_index(li_idx, len(infos), "layer")
        f = infos[li_idx].ffn
        idx = torch.as_tensor(sorted({int(i) for i in idx}), dtype=torch.long)
        if len(idx) == 0:
            raise ConfigError(f"remove_ffn_neurons_: layer {li_idx} would keep no FFN neuron; keep at least one")
        if int(idx.max()) >= f.intermediate_size or int(idx.min()) < 0:
            raise ConfigError(f"remove_ffn_neurons_: neuron indices of layer {li_idx} must be in 0..{f.intermediate_size - 1}")
        for m in (f.up, f.gate):
            if m is not None:
                replace_module(hf, m, slice_linear(m, out_idx=idx))
        replace_module(hf, f.down, slice_linear(f.down, in_idx=idx))
        sizes[li_idx] = len(idx)
    if fix_config:
        get_adapter(model).fix_config(model)
    return sizes


def remove_layers_(model: nn.Module, keep: Iterable[int] | dict[str, Iterable[int]], fix_config: bool = True) -> dict:
    """Keep only the given layers: a list of indices for a single-stack model, or
    {"encoder": [...], "decoder": [...]} per stack. Returns {stack: layers left}."""
    adapter = get_adapter(model)
    stacks = adapter.layer_containers(model)
    if not isinstance(keep, dict):
        if len(stacks) != 1:
            raise ConfigError(f"remove_layers_: this model has stacks {', '.join(stacks)}; give keep per stack, "
                              "e.g. {'encoder': [0, 2], 'decoder': [0, 1]}")
        keep = {next(iter(stacks)): keep}
    out = {}
    for stack, idx in keep.items():
        if stack not in stacks:
            raise ConfigError(f"remove_layers_: no layer stack {stack!r}; accepted: {', '.join(stacks)}")
        layers = stacks[stack]
        idx = sorted({int(i) for i in idx})
        for i in idx:
            _check_index(i, len(layers), f"{stack} layer")
        if not idx:
            raise ConfigError(f"remove_layers_: keep at least one {stack} layer")
        kept = [layers[i] for i in idx]
        for i in range(len(layers) - 1, -1, -1):
            del layers[i]
        for m in kept:
            layers.append(m)
        out[stack] = len(kept)
    if fix_config:
        adapter.fix_config(model)
    return out


def apply_layer_sizes_(model: nn.Module, sizes: list[dict]) -> None:
    """Shape a freshly built model's layers to recorded per-layer sizes (config
    `slimformer_layer_sizes`, written by the adapters after non-uniform surgery), so saved
    tensors load into it. Keeps the first units / neurons: the values are overwritten by the load."""
    infos = _layers(model)
    if len(sizes) != len(infos):
        raise ValueError(f"slimformer_layer_sizes lists {len(sizes)} layers but the model has {len(infos)}")
    heads, ffn = {}, {}
    for i, (li, s) in enumerate(zip(infos, sizes)):
        a = li.attention
        want_kv = s.get("kv_heads", s["heads"])
        if want_kv < a.num_kv_heads:
            heads[i] = range(want_kv, a.num_kv_heads)
        if s["intermediate"] < li.ffn.intermediate_size:
            ffn[i] = range(s["intermediate"])
    remove_heads_(model, heads, fix_config=False)
    remove_ffn_neurons_(model, ffn, fix_config=False)
    get_adapter(model).fix_config(model)


def linear_shape(m: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear-like module."""
    return out_features(m), in_features(m)


def layer_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the linear layers inside the Transformer layers (q/k/v/o, FFN), by the
    adapter: what sparsity and low-rank methods act on by default (never the LM head, the
    embeddings or a task head)."""
    names = module_names(model)
    return [(names[id(m)], m) for m in get_adapter(model).body_linears(model)]
