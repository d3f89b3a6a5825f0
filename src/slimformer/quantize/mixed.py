"""Mixed precision by sensitivity: keep the layers whose quantization hurts most in float (or
int8, or int4 on a group-32 grid, inside a 4-bit weight-only model)."""
from __future__ import annotations

import copy
import dataclasses

import torch
from tqdm.auto import tqdm

from ..core.config import Applied, Traits, handler_for, register_method
from ..core.run import Run
from ..data import model_batches
from ..evaluate.fidelity import fidelity_drop
from ..evaluate.fidelity import fidelity_outputs as _outputs
from ..models.surgery import set_module as _set_module
from .handlers import head_name, linear_targets
from .schemes import MixedPrecisionConfig, scheme_steps


def _run(sm, cfg, run) -> list[str]:
    out = handler_for(cfg)(sm, cfg, run)
    return out.warnings if isinstance(out, Applied) else list(out or [])


@register_method(MixedPrecisionConfig, traits=Traits(needs_calibration=True))
def mixed_precision(sm, cfg: MixedPrecisionConfig, run) -> Applied:
    data = run.calibration
    *floats, scheme = scheme_steps(cfg.scheme)
    pre_warnings, pre_details = [], {}
    for step in floats:  # fold the rotation / AWQ scales once (exact in float), then search as usual
        out = handler_for(step)(sm, step, run)
        pre_warnings += out.warnings
        pre_details[step.method] = out.details
    finer = cfg.fallback != "float"  # kept layers go to int8 or to int4 g32, not float
    # what the search quantizes with: GPTQ schemes are searched with RTN at the same bits/groups
    probe = scheme
    if getattr(scheme, "algorithm", None) == "gptq":
        probe = dataclasses.replace(scheme, algorithm="rtn", refit=False, act_order=False, cd_passes=0)
    n_texts = cfg.calibration_texts or (8 if sm.kind == "causal-lm" else 64)
    texts = list(data or [])[:n_texts]
    batches = _stack(model_batches(sm, texts, 128, max_seqs=n_texts))
    ref = _outputs(sm, batches)
    names = [n for n, _ in linear_targets(sm, scheme, include_head=True)]
    if finer:  # the LM head is int8 already in weight-only schemes
        names = [n for n in names if n != head_name(sm)]

    def keeping(cfg_, kept):
        if cfg.fallback == "int8":
            return dataclasses.replace(cfg_, int8_targets=tuple(kept))
        if cfg.fallback == "int4-g32":
            return dataclasses.replace(cfg_, fine_targets=tuple(kept), fine_group_size=32)
        return dataclasses.replace(cfg_, ignore=tuple(cfg_.ignore) + tuple(kept))

    # sensitivity of each layer alone (embedding table excluded: it is measured with the whole
    # model), on one scratch copy: quantize the layer, measure, put the float layer back
    scratch = copy.deepcopy(sm)
    only = {}
    for n in tqdm(names, desc="sensitivity", leave=False):
        original = scratch.model.get_submodule(n)
        one = dataclasses.replace(probe, targets=(n,), **_no_emb(probe))
        _run(scratch, one, run.with_calibration(texts))
        only[n] = fidelity_drop(ref, _outputs(scratch, batches), sm.kind)
        _set_module(scratch.model, n, original)
    del scratch
    order = sorted(names, key=lambda n: only[n], reverse=True)
    kept, drop = _greedy(sm, probe, order, keeping, cfg, lambda m: fidelity_drop(ref, _outputs(m, batches), sm.kind),
                         texts, incremental=_layerwise(probe))
    final = keeping(scheme, kept)
    warnings = pre_warnings + _run(sm, final, run)  # all the data (GPTQ calibrates on it)
    searched = drop
    if probe is not scheme:
        drop = fidelity_drop(ref, _outputs(sm, batches), sm.kind)
    how = cfg.fallback.replace("-", "_")  # meta key kept_float / kept_int8 / kept_int4_g32
    details = {"scheme": cfg.scheme, "fallback": cfg.fallback, f"kept_{how}": kept,
               "fidelity_drop": drop, "searched_drop": searched, "max_drop": cfg.max_drop,
               "sensitivity": only, **pre_details}
    met = "met" if drop <= cfg.max_drop else "NOT met"
    warnings.append(f"kept {how} ({len(kept)}): {', '.join(kept) or 'none'}; fidelity drop {drop:.5f} "
                    f"(budget {cfg.max_drop}: {met})")
    return Applied(warnings, details)


def _layerwise(probe) -> bool:
    """True when the probe quantizes each layer on its own weights alone (round-to-nearest
    weight-only, dynamic int8), so changing one layer's format changes nothing else."""
    from .configs import Int8DynamicConfig, WeightOnlyConfig

    return (isinstance(probe, WeightOnlyConfig) and probe.algorithm == "rtn") or isinstance(probe, Int8DynamicConfig)


def _greedy(sm, probe, order, keeping, cfg, drop_of, texts, incremental: bool) -> tuple[list[str], float]:
    """Move layers to the fallback format from the most sensitive down until the probe model's
    drop is within cfg.max_drop (or cfg.max_float layers). incremental: keep one quantized
    scratch model and re-quantize only the layer that moves (same result as quantizing the
    whole model again when the probe is layer-wise; ~100x faster on a 200-layer LM)."""
    kept: list[str] = []
    limit = min(cfg.max_float, len(order))
    work = copy.deepcopy(sm)
    _run(work, probe, Run.of(texts))
    drop = drop_of(work)
    with tqdm(total=limit, desc=f"keeping layers {cfg.fallback} (budget {cfg.max_drop:g})", leave=False) as bar:
        while drop > cfg.max_drop and len(kept) < limit:
            name = order[len(kept)]
            kept.append(name)
            if incremental:
                _set_module(work.model, name, copy.deepcopy(sm.model.get_submodule(name)))  # float again
                if cfg.fallback != "float":
                    one = dataclasses.replace(keeping(probe, [name]), targets=(name,), **_no_emb(probe))
                    _run(work, one, Run.of(texts))
            else:
                work = copy.deepcopy(sm)
                full = keeping(probe, kept)
                _run(work, full, Run.of(texts))
            drop = drop_of(work)
            bar.update(1)
            bar.set_postfix(drop=f"{drop:.4f}")
    return kept, drop


def _stack(batches: list[dict], size: int = 8) -> list[dict]:
    """LM calibration chunks come one sequence each: stack same-shaped ones, `size` at a time
    (one forward of 8 x 128 tokens runs faster than eight of 1 x 128)."""
    if not batches or set(batches[0]) != {"input_ids"}:
        return batches
    out, run = [], []
    for b in batches + [None]:
        if run and (b is None or len(run) == size or b["input_ids"].shape != run[0]["input_ids"].shape):
            out.append({"input_ids": torch.cat([r["input_ids"] for r in run])})
            run = []
        if b is not None:
            run.append(b)
    return out


def _no_emb(scheme) -> dict:
    return {"embeddings": False} if hasattr(scheme, "embeddings") else {}
