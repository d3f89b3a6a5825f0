"""Layer-by-layer calibration (the way GPTQ and SparseGPT are meant to run): the calibration batches are run
up to the first Transformer layer once; then, for each layer in turn, its Linear inputs are
observed, the layer is compressed (quantized, pruned), and the batches are run through the *compressed* layer to
give the next layer its inputs. Each layer's Hessians therefore see the error of the layers
before it, and only one layer runs per step (no full forward per layer).

Works for single-stack models (encoders, decoder LMs) whose layers are called as
`layer(hidden_states, **kwargs)`; `sequential_supported` says whether it applies.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import get_adapter
from .activations import calibration_forward, layer_input, observe_inputs
from .streaming import layer_stack, materialized, outside_modules, stream_of  # noqa: F401 (layer_stack re-exported)


class _Stop(Exception):
    pass


def sequential_supported(sm) -> bool:
    return layer_stack(sm) is not None


def _first_layer_inputs(sm, layer: nn.Module, batches: list[dict],
                        keep_dtype: torch.dtype | None = None) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of the first layer's call for every batch (the rest of the model not run);
    keep_dtype: the hidden states are kept in that dtype (see _layer_out)."""
    seen: list[tuple[tuple, dict]] = []

    def pre(mod, args, kwargs):
        kwargs = {k: _shared(v, seen[0][1].get(k) if seen else None) for k, v in kwargs.items()}
        if keep_dtype is not None:
            args, kwargs = _with_hidden(args, kwargs, _hidden(args, kwargs).to(keep_dtype))
        seen.append((args, kwargs))
        raise _Stop

    h = layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for enc in batches:
            try:
                calibration_forward(sm, enc)
            except _Stop:
                pass
    finally:
        h.remove()
    if len(seen) != len(batches):
        raise RuntimeError("sequential calibration: the first layer was not called for every batch")
    return seen


def _shared(value, first):
    """`first` (the first batch's) where `value` equals it: equal-length batches get the same
    rotary cos/sin and positions, kept once instead of once per batch (2 MB each at 2048 tokens)."""
    if isinstance(value, tuple) and isinstance(first, tuple) and len(value) == len(first):
        return tuple(_shared(v, f) for v, f in zip(value, first))
    if (isinstance(value, torch.Tensor) and isinstance(first, torch.Tensor) and value.shape == first.shape
            and value.dtype == first.dtype and torch.equal(value, first)):
        return first
    return value


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _layer_out(layer: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The layer's output hidden states. Hidden states kept in a narrower dtype than the layer
    computes in (a streamed bf16 model under a memory limit) go in in the layer's dtype and come out in
    the dtype they were kept in."""
    h = _hidden(args, kwargs)
    w = next((p for p in layer.parameters() if p.is_floating_point()), None)
    computes = w.dtype if w is not None else torch.float32
    kept = h.dtype if h.is_floating_point() and h.dtype != computes else None
    if kept is not None:
        args, kwargs = _with_hidden(args, kwargs, h.to(computes))
    out = layer(*args, **kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.to(kept) if kept is not None else out


def _call_groups(sm, layer: nn.Module, names: list[str], first: tuple[tuple, dict]) -> list[list[str]]:
    """Targets of `layer` in the order one batch calls them; consecutive calls on the very same
    input tensor form one group. Targets the batch never calls come last, as one group."""
    order: list[tuple[str, torch.Tensor]] = []
    hooks = [sm.model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: order.append((n, args[0]))) for n in names]
    try:
        _layer_out(layer, *first)
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    last = None
    for n, x in order:
        if any(n in g for g in groups):
            continue
        if last is not None and x is last and groups:
            groups[-1].append(n)
        else:
            groups.append([n])
        last = x
    missed = [n for n in names if not any(n in g for g in groups)]
    return groups + ([missed] if missed else [])


@torch.inference_mode()
def run_sequential(sm, targets: list[tuple[str, nn.Module]], batches: list[dict],
                   observe: Callable[[str, torch.Tensor, torch.Tensor], None],
                   process_layer: Callable[[list[tuple[str, nn.Module]]], None],
                   desc: str = "sequential calibration", true_sequential: bool = True,
                   exact: bool = False, end_of_batch: Callable[[], None] | None = None) -> None:
    """For each layer of the stack: run every batch through it with hooks calling
    observe(name, input as float, the input tensor itself) for its targets, call
    process_layer(its targets) (which swaps modules in place), then run the batches through the
    compressed layer to make the next layer's inputs. true_sequential: inside a layer, quantize
    the targets in the order the layer calls them, in groups that share one input (q/k/v, then
    o, then gate/up, then down), each group observed after the groups before it were compressed
    (one more pass of the layer per group). exact: process_layer does not change what the
    layer computes (a float re-parametrisation such as AWQ scaling), so the observation pass's
    outputs are the next layer's inputs (one pass per layer instead of two; needs
    true_sequential=False). Targets outside the layers (e.g. a pooler) are observed in one final
    pass of the whole model and compressed last. end_of_batch: called after each batch of an
    observation pass (a collector drops what it kept of that batch's inputs)."""
    if exact and true_sequential:
        raise ValueError("run_sequential: exact=True observes each layer in one pass; use true_sequential=False")
    stack = layer_stack(sm)
    if stack is None:
        raise ValueError("sequential calibration needs a model with one layer stack")
    prefix, layers = stack
    per_layer: list[list[str]] = [[] for _ in layers]
    outside = []
    for name, _ in targets:
        idx = _layer_index(name, prefix, len(layers))
        (outside if idx is None else per_layer[idx]).append(name)
    stream = stream_of(sm)
    if stream is not None:  # a streamed model: the modules in front of the layers, in float32, for this pass only
        with materialized(sm, outside_modules(sm, prefix, skip=(_head(sm) or "",)), torch.float32, write=False):
            cache = _first_layer_inputs(sm, layers[0], batches, stream.activation_dtype)
    else:
        cache = _first_layer_inputs(sm, layers[0], batches)

    def hooked(names: list[str]):
        hooks = []
        for n in names:
            mod = sm.model.get_submodule(n)
            hooks.append(mod.register_forward_hook(
                lambda m, args, out, n=n: observe(n, layer_input(m, args[0].detach()).float(), args[0])))
        return hooks

    for i, layer in enumerate(tqdm(layers, desc=desc, leave=False)):
        if stream is not None:
            stream.load(f"{prefix}.{i}", torch.float32)  # as the whole-model path computes
            if i + 1 < len(layers):
                stream.prefetch(f"{prefix}.{i + 1}")  # read while this one is processed
        names = per_layer[i]
        groups = _call_groups(sm, layer, names, cache[0]) if true_sequential and names else [names]
        outs = []  # exact: the observation pass's outputs, the next layer's inputs
        for group in groups:
            if not group:
                continue
            hooks = hooked(group)
            try:
                for args, kwargs in cache:
                    out = _layer_out(layer, args, kwargs)
                    if exact:
                        outs.append(out)
                    if end_of_batch is not None:
                        end_of_batch()
            finally:
                for h in hooks:
                    h.remove()
            process_layer([(n, sm.model.get_submodule(n)) for n in group])
        if i + 1 < len(layers):
            if exact and outs:
                cache = [_with_hidden(args, kwargs, h) for (args, kwargs), h in zip(cache, outs)]
            else:  # each batch's output replaces its input as it is made: one copy of the activations
                for j, (args, kwargs) in enumerate(cache):
                    cache[j] = _with_hidden(args, kwargs, _layer_out(layer, args, kwargs))
            outs = []
        if stream is not None:
            stream.unload(f"{prefix}.{i}")  # written out, dropped
    if outside:
        if stream is not None:
            raise ValueError(f"{desc}: {', '.join(outside)} lie outside the layers and need a pass of the whole "
                             "model; a streamed model cannot give one (leave them out of the targets)")
        observe_inputs(sm, [(n, sm.model.get_submodule(n)) for n in outside], batches, None, "",
                       consume_raw=observe)
        process_layer([(n, sm.model.get_submodule(n)) for n in outside])


def _layer_index(name: str, prefix: str, n: int) -> int | None:
    """The index of the layer of stack `prefix` (n layers) that module `name` lies in, or None."""
    head, _, rest = name.partition(prefix + ".")
    idx = rest.split(".", 1)[0] if head == "" and rest else ""
    return int(idx) if idx.isdigit() and int(idx) < n else None


def _head(sm) -> str | None:
    head = get_adapter(sm.model).lm_head(sm.model)
    if head is None:
        return None
    return next((n for n, m in sm.model.named_modules() if m is head), None)


def by_layer(sm, targets: list[tuple[str, nn.Module]], desc: str):
    """Yield (name, module) for each target, layer by layer (targets outside the layers last). For
    a streamed model each layer is read (in its stored dtype: the caller's math converts one matrix
    at a time, as it does a float32 one) before its targets and written out after them; a target
    outside the layers likewise while it is processed. For methods whose math reads only the
    weights (round-to-nearest)."""
    stack = layer_stack(sm)
    stream = stream_of(sm)
    if stack is None or stream is None:
        for name, mod in tqdm(targets, desc=desc, leave=False):
            yield name, sm.model.get_submodule(name)
        return
    prefix, layers = stack
    per_layer: dict[int, list[str]] = {}
    outside = []
    for name, _ in targets:
        idx = _layer_index(name, prefix, len(layers))
        (outside if idx is None else per_layer.setdefault(idx, [])).append(name)
    order = sorted(per_layer)
    for n, i in enumerate(tqdm(order, desc=desc, leave=False)):
        with materialized(sm, [f"{prefix}.{i}"]):  # as stored: the math upcasts one matrix at a time
            if n + 1 < len(order):
                stream.prefetch(f"{prefix}.{order[n + 1]}")  # read while this one is processed
            for name in per_layer[i]:
                yield name, sm.model.get_submodule(name)
    for name in outside:
        with materialized(sm, [name]):
            yield name, sm.model.get_submodule(name)


def with_hessians(sm, targets: list[tuple[str, nn.Module]], batches: list[dict], fn: Callable,
                  sequential: bool = True, true_sequential: bool = False, name: str = "calibration") -> list[str]:
    """Call fn(layer name, module, H) for every target, H = X^T X of its calibration inputs (GPTQ,
    SparseGPT): layer by layer on the outputs of the already-processed layers where the model has
    one layer stack (and `sequential`), else from one pass of the unchanged model. Returns warnings."""
    from .activations import hessian_collector, hessians

    if sequential and sequential_supported(sm):
        hs, observe = hessian_collector()

        def process(items):
            for n, mod in items:
                fn(n, mod, hs.pop(n).H)
            observe.seen.clear()

        run_sequential(sm, targets, batches, observe, process, desc=f"{name} (layer by layer)",
                       true_sequential=true_sequential, end_of_batch=observe.seen.clear)  # (else it holds every batch's inputs)
        return []
    if stream_of(sm) is not None:
        raise ValueError(f"{name}: a streamed model is calibrated layer by layer (sequential); this configuration asks "
                         "for one pass of the whole model")
    hs = hessians(sm, targets, batches, f"{name} calibration")
    for n, mod in tqdm(targets, desc=name, leave=False):
        fn(n, mod, hs.pop(n).H)
    if sequential:
        return [f"{name}: layer-by-layer calibration does not apply to this architecture; Hessians come from one "
                "pass of the unchanged model"]
    return []


@torch.inference_mode()
def final_hidden(sm, batches: list[dict], desc: str = "layer by layer") -> list[torch.Tensor]:
    """The last layer's output for each batch, computed one layer at a time over all batches (a
    streamed model reads each layer in float32 once, and drops it after). Works in memory too."""
    stack = layer_stack(sm)
    if stack is None:
        raise ValueError("layer-by-layer evaluation needs a model with one layer stack")
    prefix, layers = stack
    stream = stream_of(sm)
    with materialized(sm, outside_modules(sm, prefix, skip=(_head(sm) or "",)) if stream else [], torch.float32,
                      write=False):
        cache = _first_layer_inputs(sm, layers[0], batches)
    for i, layer in enumerate(tqdm(layers, desc=desc, leave=False)):
        with materialized(sm, [f"{prefix}.{i}"] if stream else [], torch.float32, write=False):
            if stream is not None and i + 1 < len(layers):
                stream.prefetch(f"{prefix}.{i + 1}")
            for j, (args, kwargs) in enumerate(cache):
                cache[j] = _with_hidden(args, kwargs, _layer_out(layer, args, kwargs))
    return [_hidden(args, kwargs) for args, kwargs in cache]
