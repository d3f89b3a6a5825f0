"""Calibration activations, shared by every method family: one calibration forward, hooks that
observe the inputs of chosen linear layers, and the Hessian accumulator (X^T X of a layer's
inputs) that GPTQ and SparseGPT both use. Token batches come from `data.model_batches`.

A module that transforms its input before its weight multiplies it (a run-time rotation) exposes
it as `input_rotation`; observers see the transformed input, which is what the weight meets.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def calibration_forward(sm, enc: dict):
    """One forward pass of a calibration batch (no KV cache for models that have one)."""
    return sm.model(**enc, **({"use_cache": False} if sm.kind != "embedding" else {}))


def model_output(sm, enc: dict) -> torch.Tensor:
    """The model's logits (or last hidden state) on one batch, float32, for before/after checks."""
    o = calibration_forward(sm, enc)
    t = o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state
    return t.detach().float()


def layer_input(mod: nn.Module, x: Tensor) -> Tensor:
    """What a layer's weight multiplies: its input, rotated if the layer rotates its input."""
    rot = getattr(mod, "input_rotation", None)
    return rot(x) if rot is not None else x


@torch.inference_mode()
def observe_inputs(sm, targets: list[tuple[str, nn.Module]], batches: list[dict],
                   consume: Callable[[str, torch.Tensor], None] | None, desc: str = "calibration",
                   consume_raw: Callable | None = None) -> None:
    """Run the model over `batches`; for each target, call consume(name, input (..., in)) (or
    consume_raw(name, input as float, the input tensor itself) to see which layers share it).
    Padding positions are included (they are real inputs of the layer at run time too)."""
    def hook(m, args, out, n):
        x = layer_input(m, args[0].detach())
        if consume_raw is not None:
            consume_raw(n, x.float(), args[0])  # args[0]: the same object for layers sharing an input
        else:
            consume(n, x.float())

    hooks = [mod.register_forward_hook(lambda m, args, out, n=name: hook(m, args, out, n)) for name, mod in targets]
    try:
        for enc in tqdm(batches, desc=desc, leave=False, disable=not desc):
            calibration_forward(sm, enc)
    finally:
        for h in hooks:
            h.remove()


def input_absmax(sm, targets: list[tuple[str, nn.Module]], batches: list[dict], desc: str = "calibration") -> dict:
    """{name: per-channel max |x| of the layer's input (in,)} over the batches."""
    amax: dict[str, Tensor] = {}

    def consume(name, x):
        a = x.reshape(-1, x.shape[-1]).abs().amax(0)
        amax[name] = a if name not in amax else torch.maximum(amax[name], a)

    observe_inputs(sm, targets, batches, consume, desc)
    return amax


class HessianAccumulator:
    """Accumulates H = 2/n * sum_i x_i x_i^T (in, in) in float32 over calibration rows.

    Every row of x (..., in_features) counts as one sample (tokens, not sequences)."""

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32)
        self.n_samples = 0

    def add(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with last dim {self.in_features}, got shape {tuple(x.shape)}")
        x = x.detach().reshape(-1, self.in_features).float()  # (n, in)
        n = x.shape[0]
        if n == 0:
            return
        if self.H.device != x.device:
            self.H = self.H.to(x.device)
        self.H *= self.n_samples / (self.n_samples + n)  # running average
        self.n_samples += n
        x = x * math.sqrt(2.0 / self.n_samples)
        self.H.addmm_(x.T, x)



def hessian_collector():
    """({name: HessianAccumulator}, observe(name, x, raw)). Layers fed the very same tensor
    (q/k/v, gate/up) share one accumulator, so X^T X is computed once for them. `observe.seen`
    maps id(input tensor) -> (accumulator, tensor); holding the tensor keeps its memory from
    being reused by a later input while the entry exists - clear it between passes."""
    hs: dict[str, HessianAccumulator] = {}
    seen: dict[int, tuple[HessianAccumulator, torch.Tensor]] = {}

    def observe(name, x, raw):
        hit = seen.get(id(raw))
        if name not in hs:
            hs[name] = hit[0] if hit is not None and hit[1] is raw else HessianAccumulator(x.shape[-1])
        acc = hs[name]
        if hit is None or hit[1] is not raw or hit[0] is not acc:
            seen[id(raw)] = (acc, raw)
            acc.add(x)

    observe.seen = seen
    return hs, observe


def hessians(sm, targets: list[tuple[str, nn.Module]], batches: list[dict], desc: str = "calibration") -> dict:
    """X^T X of each target's input over the batches, in one pass of the model."""
    hs, observe = hessian_collector()
    for enc in tqdm(batches, desc=desc, leave=False, disable=not desc):
        observe.seen.clear()
        observe_inputs(sm, targets, [enc], None, "", consume_raw=observe)
    observe.seen.clear()
    return hs


def input_absmean(sm, targets: list[tuple[str, nn.Module]], batches: list[dict], desc: str = "calibration") -> dict:
    """{name: per-channel mean |x| of the layer's input (in,)} over the batches' tokens."""
    total: dict[str, Tensor] = {}
    count: dict[str, int] = {}

    def consume(name, x):
        x = x.reshape(-1, x.shape[-1])
        s = x.abs().sum(0)
        total[name] = s if name not in total else total[name] + s
        count[name] = count.get(name, 0) + x.shape[0]

    observe_inputs(sm, targets, batches, consume, desc)
    return {n: total[n] / max(count[n], 1) for n in total}
