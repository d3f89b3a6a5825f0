"""Importance scores for structured pruning: a registry of callables with one signature,

    score(sm, kind, batches) -> {layer index: scores (units,)}     higher = more important

kind "heads": one score per attention unit (a head, or a key/value head with its query group
under GQA); kind "ffn": one per FFN intermediate neuron. `batches` are calibration batches
(data.model_batches), unused by data-free scores. Layer indices follow the adapter's `layers()`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..adapters import get_adapter
from ..adapters.base import is_conv1d, linear_weight
from ..core.registry import Registry
from ..models.activations import calibration_forward
from ..models.gradients import backward_passes

IMPORTANCE: Registry = Registry("importance score")


def _unit_cols(a, unit: int) -> Tensor:
    """Columns of o (rows of q) that belong to attention unit `unit`."""
    group = a.num_heads // a.num_kv_heads
    return torch.arange(unit * group * a.head_dim, (unit + 1) * group * a.head_dim)


def _unit_rows_kv(a, unit: int) -> Tensor:
    return torch.arange(unit * a.head_dim, (unit + 1) * a.head_dim)


def _attn_parts(a):
    """(q, k, v) weight views (out, in) and their row offsets inside a fused qkv."""
    if a.qkv is not None:
        w = linear_weight(a.qkv)
        q, kv = a.fused_qkv_split[0], a.fused_qkv_split[1]
        return w[:q], w[q:q + kv], w[q + kv:]
    return linear_weight(a.q), linear_weight(a.k), linear_weight(a.v)


@IMPORTANCE.register("magnitude")
def magnitude(sm, kind: str, batches) -> dict[int, Tensor]:
    """L2 norm of all weights that belong to the unit (q/k/v rows and o columns of a head; up/gate
    rows and the down column of a neuron)."""
    out = {}
    for i, li in enumerate(get_adapter(sm.model).layers(sm.model)):
        if kind == "heads":
            a = li.attention
            q, k, v = (t.float() for t in _attn_parts(a))
            o = linear_weight(a.o).float()
            s = []
            for u in range(a.num_kv_heads):
                cols, kv = _unit_cols(a, u), _unit_rows_kv(a, u)
                s.append(q[cols].pow(2).sum() + k[kv].pow(2).sum() + v[kv].pow(2).sum() + o[:, cols].pow(2).sum())
            out[i] = torch.stack(s).sqrt()
        else:
            f = li.ffn
            s = linear_weight(f.up).float().pow(2).sum(1) + linear_weight(f.down).float().pow(2).sum(0)
            if f.gate is not None:
                s = s + linear_weight(f.gate).float().pow(2).sum(1)
            out[i] = s.sqrt()
    return out


def _input_stats(sm, kind: str, batches) -> dict[int, tuple[Tensor, Tensor, int]]:
    """Per layer: (sum x, sum x^2, count) of the input channels of o (heads) or down (ffn)."""
    layers = get_adapter(sm.model).layers(sm.model)
    mods = {i: (li.attention.o if kind == "heads" else li.ffn.down) for i, li in enumerate(layers)}
    acc: dict[int, list] = {}

    def hook(i):
        def f(m, args, out):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            s = acc.setdefault(i, [0.0, 0.0, 0])
            s[0] = s[0] + x.sum(0)
            s[1] = s[1] + x.pow(2).sum(0)
            s[2] += x.shape[0]
        return f

    hs = [m.register_forward_hook(hook(i)) for i, m in mods.items()]
    try:
        with torch.inference_mode():
            for enc in batches:
                calibration_forward(sm, enc)
    finally:
        for h in hs:
            h.remove()
    return {i: tuple(v) for i, v in acc.items()}


def input_means(sm, kind: str, batches) -> dict[int, Tensor]:
    """Mean of each input channel of o / down over the batches (FLAP's bias compensation)."""
    return {i: s / n for i, (s, _, n) in _input_stats(sm, kind, batches).items()}


@IMPORTANCE.register("activation")
def activation(sm, kind: str, batches) -> dict[int, Tensor]:
    """FLAP (An et al. 2024) fluctuation: the variance of each input channel of o / down over the
    calibration tokens times the squared norm of the weight column it multiplies, summed over the
    unit's channels: how much the output moves when the channel is replaced by its mean."""
    return _channel_scores(sm, kind, batches, "activation", lambda s, s2, n: (s2 / n - (s / n).pow(2)).clamp_min(0))


@IMPORTANCE.register("energy")
def energy(sm, kind: str, batches) -> dict[int, Tensor]:
    """E[x^2] of each input channel of o / down times the squared norm of the weight column it
    multiplies: the expected squared change of the output when the channel is removed (set to 0,
    with no bias to compensate). Unlike "activation" (a variance), it keeps channels with large,
    nearly constant activations, which LLMs such as SmolLM2 have and cannot lose."""
    return _channel_scores(sm, kind, batches, "energy", lambda s, s2, n: s2 / n)


def _channel_scores(sm, kind: str, batches, name: str, stat) -> dict[int, Tensor]:
    """stat(sum x, sum x^2, count) per input channel of o / down, times the squared norm of the
    weight column it multiplies, summed over each unit's channels (heads) or per neuron (ffn)."""
    if not batches:
        raise ValueError(f"importance {name!r} needs calibration data")
    layers = get_adapter(sm.model).layers(sm.model)
    out = {}
    for i, (s, s2, n) in _input_stats(sm, kind, batches).items():
        li = layers[i]
        w = linear_weight(li.attention.o if kind == "heads" else li.ffn.down).float()
        ch = stat(s, s2, n) * w.pow(2).sum(0)  # (in,)
        if kind == "heads":
            a = li.attention
            out[i] = torch.stack([ch[_unit_cols(a, u)].sum() for u in range(a.num_kv_heads)])
        else:
            out[i] = ch
    return out


@IMPORTANCE.register("taylor")
def taylor(sm, kind: str, batches) -> dict[int, Tensor]:
    """First-order Taylor (Molchanov et al. 2019; head importance of Michel et al. 2019):
    |sum over the unit's weights of w * dL/dw|, accumulated over batches. L: the language-model
    loss for causal LMs; otherwise a distillation loss to the original (MSE of the outputs of the
    model with dropout on against the original's), which needs no labels."""
    if not batches:
        raise ValueError("importance 'taylor' needs calibration data")
    model = sm.model
    layers = get_adapter(model).layers(model)
    params = {}
    for i, li in enumerate(layers):
        if kind == "heads":
            a = li.attention
            params[i] = [m for m in (a.q, a.k, a.v, a.qkv, a.o) if m is not None]
        else:
            params[i] = [m for m in (li.ffn.up, li.ffn.gate, li.ffn.down) if m is not None]
    acc = {i: None for i in params}

    def add():
        for i, li in enumerate(layers):
            s = _unit_taylor(li, kind)
            acc[i] = s if acc[i] is None else acc[i] + s

    backward_passes(sm, [m.weight for mods in params.values() for m in mods], batches, add, loss="distill")
    return acc


def _wg(m) -> Tensor:
    """w * dL/dw as an (out, in) view (Conv1D stores (in, out))."""
    g = m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight)
    t = (m.weight.detach() * g).float()
    return t.t() if is_conv1d(m) else t


def _unit_taylor(li, kind: str) -> Tensor:
    if kind == "heads":
        a = li.attention
        if a.qkv is not None:
            t = _wg(a.qkv)
            q, kv = a.fused_qkv_split[0], a.fused_qkv_split[1]
            tq, tk, tv = t[:q], t[q:q + kv], t[q + kv:]
        else:
            tq, tk, tv = _wg(a.q), _wg(a.k), _wg(a.v)
        to = _wg(a.o)
        return torch.stack([(tq[_unit_cols(a, u)].sum() + tk[_unit_rows_kv(a, u)].sum() + tv[_unit_rows_kv(a, u)].sum()
                             + to[:, _unit_cols(a, u)].sum()).abs() for u in range(a.num_kv_heads)])
    f = li.ffn
    s = _wg(f.up).sum(1) + _wg(f.down).sum(0)
    if f.gate is not None:
        s = s + _wg(f.gate).sum(1)
    return s.abs()


@IMPORTANCE.register("random")
def random(sm, kind: str, batches) -> dict[int, Tensor]:
    """Uniform random scores (seeded): the baseline every score must beat."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, li in enumerate(get_adapter(sm.model).layers(sm.model)):
        n = li.attention.num_kv_heads if kind == "heads" else li.ffn.intermediate_size
        out[i] = torch.rand(n, generator=g)
    return out


@torch.inference_mode()
def block_influence(sm, batches) -> dict[str, list[float]]:
    """ShortGPT (Men et al. 2024): per layer, 1 - mean cosine between its input and output hidden
    states over the calibration tokens ({stack: [per layer]}); low = the layer changes little."""
    adapter = get_adapter(sm.model)
    stacks = adapter.layer_containers(sm.model)
    acc = {s: [[0.0, 0] for _ in layers] for s, layers in stacks.items()}
    hooks = []
    for s, layers in stacks.items():
        for i, layer in enumerate(layers):
            def f(m, args, kwargs, out, s=s, i=i):
                x = args[0] if args else kwargs.get("hidden_states")
                y = out[0] if isinstance(out, (tuple, list)) else out
                if x is None or y is None or x.shape != y.shape:
                    return
                c = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).flatten()
                acc[s][i][0] += float((1 - c).sum())
                acc[s][i][1] += c.numel()
            hooks.append(layer.register_forward_hook(f, with_kwargs=True))
    try:
        for enc in batches:
            calibration_forward(sm, enc)
    finally:
        for h in hooks:
            h.remove()
    return {s: [v / max(n, 1) for v, n in vals] for s, vals in acc.items()}
