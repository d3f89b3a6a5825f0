"""Conformance checks every compression method passes (shipped in the package so every method
family, and third-party methods, call the same ones):

    from slimformer.testing.conformance import check_method
    check_method(sf.WeightOnlyConfig(bits=4, group_size=16), "llama", "causal-lm", tmp_path, min_sqnr=12)

1. applies through the recipe pipeline and produces one StepRecord whose details is a dict;
2. the forward pass runs and gives finite outputs of the original shape;
3. the config round-trips through a recipe (dict -> YAML text -> parsed config == config);
4. a numeric bound holds: SQNR (dB) of the output vs the original above `min_sqnr`, and/or a
   caller's `bound(step_record, reference_output, output)` returning True;
5. save -> load gives identical outputs (bit for bit).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import yaml

from .slim import tiny_output, tiny_slim

TEXTS_N = 48


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """10 log10(|ref|^2 / |ref - out|^2) in dB (inf when identical)."""
    ref, out = ref.float(), out.float()
    noise = (ref - out).pow(2).sum().item()
    return float("inf") if noise == 0 else 10.0 * torch.log10(ref.pow(2).sum() / noise).item()


def check_method(cfg, family: str, kind: str, tmp_path, min_sqnr: float | None = None,
                 bound: Callable | None = None, data: list[str] | None = None):
    """Run every conformance check for `cfg` on the tiny `family` model of `kind`; returns
    (the compressed SlimModel, its StepRecord) for further, method-specific assertions."""
    import slimformer as sf
    from slimformer.core.config import config_from_dict
    from slimformer.recipes import load_recipe, parse_recipe, run_steps

    data = data if data is not None else sf.sample_sentences()[:TEXTS_N]
    sm = tiny_slim(family, kind)
    ref = tiny_output(sm)
    steps = run_steps(sm, load_recipe([cfg]), data)
    assert len(steps) == 1 and steps[0].method == cfg.method, "one StepRecord for the step"
    assert isinstance(steps[0].details, dict), "the handler reports a details dict"
    out = tiny_output(sm)
    assert out.shape == ref.shape and torch.isfinite(out).all(), "forward runs, same shape, finite"
    text = yaml.safe_dump({"name": "conformance", "steps": [cfg.to_dict()]})
    assert parse_recipe(yaml.safe_load(text)).steps[0] == cfg, "config round-trips through a recipe"
    assert config_from_dict(cfg.to_dict()) == cfg
    if min_sqnr is not None:
        db = sqnr_db(ref, out)
        assert db > min_sqnr, f"SQNR {db:.1f} dB <= {min_sqnr} dB"
    if bound is not None:
        assert bound(steps[0], ref, out), "the method's numeric bound"
    again = sf.load(sf.save(sm, Path(tmp_path) / "conformance"))
    assert torch.equal(tiny_output(again), out), "save -> load gives identical outputs"
    return sm, steps[0]
