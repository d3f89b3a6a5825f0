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
    steps, _ = run_steps(sm, load_recipe([cfg]), data)
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


def _round_trips(cfg) -> None:
    from slimformer.core.config import config_from_dict
    from slimformer.recipes import parse_recipe

    text = yaml.safe_dump({"name": "conformance", "steps": [cfg.to_dict()]})
    assert parse_recipe(yaml.safe_load(text)).steps[0] == cfg, "config round-trips through a recipe"
    assert config_from_dict(cfg.to_dict()) == cfg


def check_artifact(cfg, sm, tmp_path, data: list[str] | None = None, close: Callable | None = None):
    """Conformance of an export step (trait `artifact`): it applies as the last recipe step and
    returns an artifact (not the model), one StepRecord with a details dict, bytes on disk, the
    config round-trips, and the artifact reloads with `slimformer.load` where `close(model,
    reloaded)` holds (outputs close to the model it was written from). Returns (artifact, record)."""
    import slimformer as sf
    from slimformer.core.config import traits_of
    from slimformer.core.run import Run
    from slimformer.recipes import load_recipe, run_steps

    assert traits_of(cfg).artifact, f"{cfg.method} is registered without the artifact trait"
    data = data if data is not None else sf.sample_sentences()[:TEXTS_N]
    run = Run(calibration=list(data), artifact_dir=Path(tmp_path) / "artifacts")
    steps, art = run_steps(sm, load_recipe([cfg]), run)
    assert len(steps) == 1 and steps[0].method == cfg.method and isinstance(steps[0].details, dict)
    assert art is not sm, "an export step returns its artifact"
    assert steps[0].bytes_after == art.disk_bytes()["bytes"] > 0
    _round_trips(cfg)
    if close is not None:
        where = getattr(art, "folder", None) or getattr(art, "path")
        assert close(sm, sf.load(where)), "the reloaded artifact computes what the model did"
    return art, steps[0]


def check_training(steps, sm, tmp_path, run_options: dict | None = None, bound: Callable | None = None):
    """Conformance of a training step, or of a step acting during training followed by one:
    `steps` (configs) run through the pipeline with the model itself as the original (the teacher
    of a recovery); every step gives a StepRecord, the model runs and gives finite outputs, every
    config round-trips, `bound(records, model)` holds, and save -> load gives identical outputs.
    Returns (model, records)."""
    import copy

    import slimformer as sf
    from slimformer.core.run import Original, Run
    from slimformer.recipes import load_recipe, run_steps

    run = Run(calibration=sf.sample_sentences()[:TEXTS_N], original=Original.of(copy.deepcopy(sm)),
              work_dir=Path(tmp_path) / "work", **(run_options or {}))
    records, final = run_steps(sm, load_recipe(list(steps)), run)
    assert [r.method for r in records] == [c.method for c in steps]
    assert all(isinstance(r.details, dict) for r in records)
    out = tiny_output(final)
    assert torch.isfinite(out).all(), "forward runs, finite"
    for c in steps:
        _round_trips(c)
    if bound is not None:
        assert bound(records, final), "the method's bound"
    again = sf.load(sf.save(final, Path(tmp_path) / "conformance"))
    assert torch.equal(tiny_output(again), out), "save -> load gives identical outputs"
    return final, records
