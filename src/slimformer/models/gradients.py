"""Gradients of a calibration loss, shared by the methods that read them (Taylor importance in
pruning, Fisher-weighted SVD): a loss that needs no labels, and the backward loop that keeps only
the chosen weights trainable and restores the model afterwards."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .activations import calibration_forward


def _output(sm, enc):
    o = calibration_forward(sm, enc)
    return o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state


def calibration_loss(sm, enc: dict, loss: str = "distill", generator: torch.Generator | None = None):
    """A loss on one calibration batch that needs no labels. Causal LMs: the LM loss on the batch.
    Others, loss `distill`: MSE of the outputs with dropout on against the model's own outputs
    without (informative through the dropout noise); loss `fisher`: sum(g * output) with g ~ N(0, 1)
    drawn per batch, whose squared gradients estimate the Fisher information of a Gaussian
    likelihood around the outputs (J^T J) in expectation."""
    model = sm.model
    if sm.kind == "causal-lm":
        model.eval()
        return model(**enc, labels=enc["input_ids"], use_cache=False).loss
    if loss == "fisher":
        model.eval()
        out = _output(sm, enc)
        g = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        return (out * g).sum() / out.shape[0]
    with torch.no_grad():
        model.eval()
        ref = _output(sm, enc)
    model.train()
    return torch.nn.functional.mse_loss(_output(sm, enc), ref)


def backward_passes(sm, weights: Iterable[nn.Parameter], batches: list[dict], after_backward: Callable[[], None],
                    loss: str = "distill", seed: int = 0) -> None:
    """For each batch: backward the calibration loss with only `weights` requiring gradients,
    then call after_backward() (which reads their .grad). The model's requires_grad flags, mode
    and gradients are restored afterwards."""
    model = sm.model
    weights = list(weights)
    was = model.training
    req = {p: p.requires_grad for p in model.parameters()}
    gen = torch.Generator().manual_seed(seed)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for enc in batches:
            model.zero_grad(set_to_none=True)
            calibration_loss(sm, enc, loss, gen).backward()
            after_backward()
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in req.items():
            p.requires_grad_(r)
        model.train(was)
