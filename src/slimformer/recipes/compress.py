"""slimformer.compress: evaluate, run the recipe's steps, evaluate again, record everything."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import handler_for
from ..evaluate.api import EvalOptions, evaluate
from ..evaluate.efficiency import saved_bytes
from ..evaluate.result import recovery
from .recipe import load_recipe
from .result import CompressionResult, StepRecord


@dataclass(frozen=True)
class CompressOptions:
    evaluate: EvalOptions = field(default_factory=EvalOptions)
    calibration_samples: int = 128
    seed: int = 0


def calibration_texts_for(task, n: int, seed: int) -> list[str]:
    from ..data import calibration_texts, sample_sentences

    return calibration_texts(task if task is not None else sample_sentences(), n=n, seed=seed)


def run_steps(model, recipe, calibration: list[str]) -> list[StepRecord]:
    """Apply each step in place; one StepRecord per step with sizes before and after."""
    records = []
    for cfg in recipe.steps:
        before = saved_bytes(model)["bytes"], model.num_params()
        t0 = time.perf_counter()
        warnings = handler_for(cfg)(model, cfg, calibration) or []
        secs = time.perf_counter() - t0
        after = saved_bytes(model)["bytes"], model.num_params()
        records.append(StepRecord(cfg.method, cfg.to_dict(), before[1], after[1], before[0], after[0],
                                  round(secs, 3), list(warnings)))
        model.meta.setdefault("steps", []).append(cfg.to_dict())
    return records


def compress(model, recipe, task=None, out=None, options: CompressOptions | None = None) -> CompressionResult:
    """Compress `model` (a SlimModel, changed in place) with `recipe` (built-in name, YAML path,
    dict or list of configs), evaluating on `task` before and after. With `out`, the folder gets
    the model, result.json and report.md."""
    from ..report.markdown import render_markdown
    from ..models.saving import save

    opts = options or CompressOptions()
    rec = load_recipe(recipe)
    reference = copy.deepcopy(model)
    baseline = evaluate(model, task, None, opts.evaluate)
    calib = calibration_texts_for(task, opts.calibration_samples, opts.seed)
    steps = run_steps(model, rec, calib)
    compressed = evaluate(model, task, reference, opts.evaluate)
    result = CompressionResult(rec.to_dict(), steps, baseline, compressed, recovery(baseline, compressed),
                               model=model.source)
    model.meta["recipe"] = rec.to_dict()
    model.meta["result"] = result.to_dict()
    if out is not None:
        save(model, Path(out), extra_files={"result.json": result.to_json(), "report.md": render_markdown(result)})
    return result
