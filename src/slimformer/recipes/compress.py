"""slimformer.compress: evaluate, run the recipe's steps, evaluate what the recipe ends with (the
model, or the exported artifact the user will deploy), record everything."""
from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import ORIGINAL_MODEL, apply_method
from ..core.errors import ConfigError
from ..core.workspace import step_dir, training_texts
from ..evaluate.api import EvalOptions, evaluate
from ..evaluate.efficiency import saved_bytes
from ..evaluate.result import recovery
from .recipe import load_recipe
from .result import CompressionResult, StepRecord

ARTIFACT_METHODS = ("onnx", "deploy")  # steps that may turn the model into a deployable artifact: last in a recipe
TRAINING_METHODS = ("distill",)  # steps that keep checkpoints in the work folder (resumable)


@dataclass(frozen=True)
class CompressOptions:
    """evaluate: how to measure; evaluation=False skips the before/after evaluations (the steps
    are still recorded, e.g. `slimformer quantize`). calibration_samples: texts drawn from the
    task (or the packaged sample) for calibration."""

    evaluate: EvalOptions = field(default_factory=EvalOptions)
    calibration_samples: int = 128
    seed: int = 0
    evaluation: bool = True
    calibration_source: object = None  # texts or a text file to calibrate on instead of the task's texts
    unlabeled: object = None  # texts, or text file(s) joined with ',': what steps that train (distill) train on
    stage_evaluation: bool = True  # evaluate after every step of a multi-step recipe (one report row each)
    progress: bool = False  # a line on stderr as each step starts (the CLI turns it on)


def calibration_texts_for(task, n: int, seed: int, source=None) -> list[str]:
    from ..data import calibration_texts, sample_sentences

    if source is None:
        source = task if task is not None else sample_sentences()
    return calibration_texts(source, n=n, seed=seed)


def check_recipe(recipe) -> None:
    """An artifact step (export) can only be the last step."""
    for i, cfg in enumerate(recipe.steps[:-1], 1):
        if cfg.method in ARTIFACT_METHODS:
            raise ConfigError(f"recipe {recipe.name!r}: step {i} ({cfg.method}) writes a deployable artifact and must "
                              f"be the last step; {len(recipe.steps) - i} step(s) follow it")


def run_steps(model, recipe, calibration: list[str]) -> list[StepRecord]:
    """Apply each step in place; one StepRecord per step with sizes before and after and the
    handler's details. A final export step leaves its artifact in `records[-1].artifact`."""
    records, _ = run_steps_to_artifact(model, recipe, calibration)
    return records


def run_steps_to_artifact(model, recipe, calibration: list[str], work: Path | None = None, after_step=None,
                          progress: bool = False):
    """(StepRecords, what the recipe ends with: `model` itself, or the artifact of an export step).
    work: a folder in which step i gets its own `NN-method` folder (a training step keeps its
    checkpoints there). after_step(i, current): called after each step but the last."""
    check_recipe(recipe)
    records = []
    current = model
    for i, cfg in enumerate(recipe.steps, 1):
        if progress:
            print(f"[{i}/{len(recipe.steps)}] {cfg.method}", file=sys.stderr, flush=True)
        before = saved_bytes(current)["bytes"], current.num_params()
        t0 = time.perf_counter()
        with step_dir(work / f"{i:02d}-{cfg.method}" if work is not None else None):
            out = apply_method(current, cfg, calibration)
        secs = time.perf_counter() - t0
        if out.model is not None:
            current = out.model
        after = saved_bytes(current)["bytes"], current.num_params()
        records.append(StepRecord(cfg.method, cfg.to_dict(), before[1], after[1], before[0], after[0],
                                  round(secs, 3), list(out.warnings), dict(out.details)))
        if after_step is not None and i < len(recipe.steps):
            after_step(i, current)
    return records, current


def compress(model, recipe, task=None, out=None, options: CompressOptions | None = None) -> CompressionResult:
    """Compress `model` (a SlimModel, changed in place) with `recipe` (built-in name, YAML path,
    dict or list of configs), evaluating on `task` before and after. What is evaluated after is
    what the recipe ends with: the model, or the exported artifact of a final export step. With
    `out`, the folder gets that model or artifact, result.json and report.md (checked before any
    work: a folder that cannot be written is an error up front)."""
    from ..export.step import artifact_dir
    from ..models.saving import atomic_folder, check_out_dir, save, write_extra
    from ..report.markdown import render_markdown

    opts = options or CompressOptions()
    rec = load_recipe(recipe)
    check_recipe(rec)
    if out is not None:
        check_out_dir(out)
    unlabeled = _unlabeled(opts.unlabeled)  # a bad path fails here, before any work
    trains = any(s.method in TRAINING_METHODS for s in rec.steps)
    reference = copy.deepcopy(model) if opts.evaluation or trains else None
    baseline = evaluate(model, task, None, opts.evaluate) if opts.evaluation else None
    calib = calibration_texts_for(task, opts.calibration_samples, opts.seed, opts.calibration_source)
    work, resumed = _work_folder(out, rec, model, keep=trains)
    if resumed and opts.progress:
        print(f"resuming the interrupted run kept in {work}", file=sys.stderr, flush=True)
    stages = []

    def after_step(i, current):
        if opts.evaluation and opts.stage_evaluation:
            r = evaluate(current, task, None, opts.evaluate)
            stages.append({"step": i, "method": rec.steps[i - 1].method, "metrics": r.metrics,
                           "efficiency": r.efficiency})

    ok = False
    try:
        token = ORIGINAL_MODEL.set(reference)
        try:
            with artifact_dir(work), training_texts(unlabeled):
                steps, final = run_steps_to_artifact(model, rec, calib, work=work, after_step=after_step,
                                                     progress=opts.progress)
        finally:
            ORIGINAL_MODEL.reset(token)
        compressed = evaluate(final, task, reference, opts.evaluate) if opts.evaluation else None
        if compressed is not None and stages:
            stages.append({"step": len(rec.steps), "method": rec.steps[-1].method, "metrics": compressed.metrics,
                           "efficiency": compressed.efficiency})
        result = CompressionResult(rec.to_dict(), steps, baseline, compressed,
                                   recovery(baseline, compressed) if opts.evaluation else {}, model=model.source,
                                   stages=stages, resumed=resumed)
        model.meta["recipe"] = rec.to_dict()
        model.meta["result"] = result.to_dict()
        if out is not None:
            extra = {"result.json": result.to_json(), "report.md": render_markdown(result)}
            if getattr(final, "folder", None) is not None:  # an exported artifact, as written, plus the result
                def write(tmp: Path) -> None:
                    shutil.copytree(final.folder, tmp, dirs_exist_ok=True)
                    write_extra(tmp, extra)

                atomic_folder(out, write)
            else:
                save(model, Path(out), extra_files=extra)
        ok = True
    finally:
        if ok or not trains or out is None:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _unlabeled(source) -> list[str] | None:
    if source is None:
        return None
    if isinstance(source, (list, tuple)):
        return [t for t in source if isinstance(t, str) and t.strip()]
    from ..data import training_texts as read_texts

    return read_texts(str(source))


def _work_folder(out, rec, model, keep: bool) -> tuple[Path, bool]:
    """The run's work folder: beside `out` (`.NAME.slimformer-work`) when the recipe trains, so
    an interrupted run resumes from its checkpoints when re-run with the same `out` (and the same
    recipe and model; another run's folder is replaced); else a temporary folder."""
    if out is None or not keep:
        return Path(tempfile.mkdtemp(prefix=".slimformer-work-", dir=_work_parent(out))), False
    out = Path(out).expanduser().resolve()
    work = out.parent / f".{out.name}.slimformer-work"
    key = _resume_key(rec, model)
    marker = work / "run.json"
    if work.is_dir() and marker.exists() and _marker_key(marker, len(key["steps"])) == key:
        return work, True
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    marker.write_text(json.dumps({"recipe": rec.to_dict(), "model": model.source}, sort_keys=True, default=str))
    return work, False


def _resume_key(rec, model) -> dict:
    """What a run's checkpoints depend on: the model and the steps up to the last one that trains
    (a changed step after it, e.g. deploy's candidates, re-runs from the trained model instead of
    throwing the training away)."""
    steps = json.loads(json.dumps(rec.to_dict()["steps"], default=str))
    last = max((i for i, s in enumerate(rec.steps) if s.method in TRAINING_METHODS), default=len(steps) - 1)
    return {"model": model.source, "steps": steps[: last + 1]}


def _marker_key(marker: Path, n: int) -> dict | None:
    try:
        old = json.loads(marker.read_text())
        return {"model": old["model"], "steps": old["recipe"]["steps"][:n]}
    except (ValueError, KeyError, TypeError):
        return None


def _work_parent(out) -> str | None:
    if out is None:
        return None
    p = Path(out).expanduser().resolve().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)
