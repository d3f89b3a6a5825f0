"""slimformer.compress: evaluate, run the recipe's steps (recipes/pipeline.py), evaluate what the
recipe ends with (the model, or the exported artifact the user will deploy), record everything.
Every command (quantize, prune, distill, finetune, export) is a compress run of a short recipe."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import traits_of
from ..core.run import Original, Run
from ..evaluate.api import EvalOptions, evaluate
from ..evaluate.result import recovery
from .pipeline import check_recipe, last_training_step, run_steps
from .recipe import load_recipe
from .result import CompressionResult


@dataclass(frozen=True)
class CompressOptions:
    """evaluate: how to measure; evaluation=False skips the before/after evaluations (the steps
    are still recorded, e.g. `slimformer quantize`). calibration_samples: texts drawn from the
    task (or the packaged sample) for calibration. train_task: labeled training data for a
    `finetune` step. trackers: where training steps report (accelerate tracker names)."""

    evaluate: EvalOptions = field(default_factory=EvalOptions)
    calibration_samples: int = 128
    seed: int = 0
    evaluation: bool = True
    calibration_source: object = None  # texts or a text file to calibrate on instead of the task's texts
    unlabeled: object = None  # texts, or text file(s) joined with ',': what steps that train (distill) train on
    stage_evaluation: bool = True  # evaluate after every step of a multi-step recipe (one report row each)
    progress: bool = False  # a line on stderr as each step starts (the CLI turns it on)
    train_task: object = None
    trackers: tuple = ()
    callbacks: tuple = ()  # trainer callbacks every training step gets (see Run.callbacks)
    cache_dir: object = None  # a folder runs share for work that repeats between them (see Run.cache_dir)
    max_memory: int | None = None  # bytes: refuse up front a run estimated above it; smaller output shards


def calibration_texts_for(task, n: int, seed: int, source=None) -> list[str]:
    from ..data import calibration_texts, sample_sentences

    if source is None:
        source = task if task is not None else sample_sentences()
    return calibration_texts(source, n=n, seed=seed)


def compress(model, recipe, task=None, out=None, options: CompressOptions | None = None) -> CompressionResult:
    """Compress `model` (a SlimModel, changed in place) with `recipe` (built-in name, YAML path,
    dict or list of configs), evaluating on `task` before and after. What is evaluated after is
    what the recipe ends with: the model, or the exported artifact of a final export step. With
    `out`, the folder gets that model or artifact, result.json and report.md (checked before any
    work: a folder that cannot be written is an error up front; an `out` ending in .gguf or .pte
    is the file itself, with OUT.result.json and OUT.report.md beside it, and a .pte's description
    and tokenizer files)."""
    import contextlib

    from ..models.saving import OutputLock, remove_stale

    opts = options or CompressOptions()
    rec = load_recipe(recipe)
    check_recipe(rec, model)
    if out is not None:
        _check_out(out, model)
    shard = plan_memory(model, rec, opts, out)  # streamed or whole; a run above --max-memory stops here
    lock = OutputLock(out) if out is not None and _main_process() else contextlib.nullcontext()
    with lock:  # a second run with the same --out is refused while this one is alive
        if out is not None:
            remove_stale(Path(out).expanduser().resolve())
        return _compress(model, rec, task, out, opts, shard)


def plan_memory(model, rec, opts: CompressOptions, out) -> int | None:
    """For a model streamed from its shards (`load(folder, stream=True)`): keep it streamed when the
    recipe is one layer-local step written to `out` and nothing evaluates the whole model; else load
    it whole, saying why and how much memory that takes. With opts.max_memory, refuse up front a run
    whose estimate is above it. Returns the output shard size of a streamed run (else None)."""
    from ..core.errors import SlimformerError
    from ..models.loading import load_whole
    from ..models.streaming import human, plan_stream, whole_model_bytes

    stream = getattr(model, "stream", None)
    limit = opts.max_memory
    if stream is not None:
        why = None
        if len(rec.steps) != 1 or not traits_of(rec.steps[0]).layer_local:
            names = ", ".join(c.method for c in rec.steps if not traits_of(c).layer_local) or "more than one step"
            why = f"{names} works on the whole model (streamed: one layer-local step)"
        elif opts.evaluation:
            why = "evaluating before and after runs the whole model"
        elif out is None:
            why = "no output folder to write the streamed layers to"
        if why is None:
            cfg = rec.steps[0]
            calib = traits_of(cfg).needs_calibration and getattr(cfg, "algorithm", "gptq") != "rtn"
            plan = plan_stream(model, getattr(cfg, "calibration_samples", 0) if calib else 0,
                               getattr(cfg, "calibration_tokens", 0) if calib else 0, limit)
            if plan.activation_dtype is not None:  # narrowed to fit (never widened past what the caller set)
                stream.activation_dtype = plan.activation_dtype
            if opts.progress:
                for line in plan.notes:
                    print(line, file=sys.stderr, flush=True)
            return plan.shard_bytes
        need = whole_model_bytes(model)
        if limit is not None and need > limit:
            raise SlimformerError(f"--max-memory {human(limit)}: {why}, and loading it whole needs about {human(need)} "
                                  "in float32; run a layer-local step alone (quantize w4/w4-gptq/w8, prune sparsegpt/"
                                  "wanda) without evaluation to stream it")
        print(f"{why}: loading the whole model first (about {human(need)} in float32)", file=sys.stderr, flush=True)
        load_whole(model)
        return None
    if limit is not None and hasattr(model, "num_params"):
        need = 4 * model.num_params()
        if need > limit:
            raise SlimformerError(f"--max-memory {human(limit)}: the model is loaded whole ({human(need)} in float32); "
                                  "load it with stream=True (the CLI does for a folder of safetensors) to stream "
                                  "layer-local steps")
    return None


def _compress(model, rec, task, out, opts, shard=None) -> CompressionResult:
    unlabeled = _unlabeled(opts.unlabeled)  # a bad path fails here, before any work
    trains = last_training_step(rec) is not None
    needs_original = opts.evaluation or any(traits_of(s).needs_original for s in rec.steps)
    baseline = evaluate(model, task, None, opts.evaluate) if opts.evaluation else None
    calib = calibration_texts_for(task, opts.calibration_samples, opts.seed, opts.calibration_source)
    work, resumed = _work_folder(out, rec, model, keep=trains)
    if getattr(model, "stream", None) is not None:
        model.stream.start(work / "stream", shard)  # finished layers are written here, moved into `out` at the end
    if resumed and opts.progress:
        print(f"resuming the interrupted run kept in {work}", file=sys.stderr, flush=True)
    ok = False
    try:
        original = Original(model, work / "original") if needs_original else None
        run = Run(calibration=calib, task=task, train_task=opts.train_task, unlabeled=unlabeled, original=original,
                  work_dir=work, artifact_dir=work / "artifacts", threads=opts.evaluate.threads,
                  trackers=tuple(opts.trackers), callbacks=tuple(opts.callbacks),
                  cache_dir=Path(opts.cache_dir) if opts.cache_dir is not None else None)
        stages = []

        def after_step(i, current):
            if opts.evaluation and opts.stage_evaluation:
                r = evaluate(_runnable(current), task, None, opts.evaluate)
                stages.append({"step": i, "method": rec.steps[i - 1].method, "metrics": r.metrics,
                               "efficiency": r.efficiency})

        steps, final = run_steps(model, rec, run, after_step=after_step, progress=opts.progress)
        compressed = evaluate(_runnable(final), task, original(), opts.evaluate) if opts.evaluation else None
        if compressed is not None and stages:
            stages.append({"step": len(rec.steps), "method": rec.steps[-1].method, "metrics": compressed.metrics,
                           "efficiency": compressed.efficiency})
        result = CompressionResult(rec.to_dict(), steps, baseline, compressed,
                                   recovery(baseline, compressed) if opts.evaluation else {}, model=model.source,
                                   stages=stages, resumed=resumed, module_bytes=_module_bytes(final))
        for m in {id(model): model, id(final): final}.values():
            if isinstance(getattr(m, "meta", None), dict):
                m.meta["recipe"] = rec.to_dict()
                m.meta["result"] = result.to_dict()
        if out is not None and _main_process():
            _write_out(out, model, final, result, _training_logs(work))
        ok = True
    finally:
        state = _distributed_state() if ok else None
        if state is not None:
            state.wait_for_everyone()  # every process is done with the work folder
        resumable = trains and out is not None and any(work.glob("*/checkpoints/step-*"))
        if (ok or not resumable) and _main_process():  # keep a failed run's folder only if it can resume
            shutil.rmtree(work, ignore_errors=True)
    return result


def _main_process() -> bool:
    """Under torchrun / accelerate launch only rank 0 writes the output."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _runnable(final):
    """What evaluation runs: the model or ONNX artifact itself, or a written file loaded back."""
    return final.load() if hasattr(final, "load") and not hasattr(final, "embed") else final


def _check_out(out, model) -> None:
    """Before any work: `out` can be written, is not the input model's folder or inside it, and does
    not hold it (replacing `out` would delete the input)."""
    from ..core.errors import SlimformerError
    from ..models.saving import check_out_dir

    p = Path(out).expanduser().resolve()
    src = Path(str(getattr(model, "source", "") or "")).expanduser()
    if src.exists():
        src = src.resolve()
        if p == src or src in p.parents or p in src.parents:
            raise SlimformerError(f"--out {p} is the input model {src}, inside it or holds it; writing there would "
                                  "replace the input; give another folder")
    if p.suffix in (".gguf", ".pte"):
        from ..export.executorch import foreign_tokenizer_files, written_by_slimformer
        from ..export.formats import gguf_written_by_slimformer

        mine = gguf_written_by_slimformer if p.suffix == ".gguf" else written_by_slimformer
        if p.exists() and (not p.is_file() or not mine(p)):
            raise SlimformerError(f"{p} exists and was not written by slimformer; refusing to overwrite it (give a "
                                  "new path)")
        if p.suffix == ".pte":  # its tokenizer files go beside it: never over a tokenizer that is not ours
            theirs = foreign_tokenizer_files(p.parent)
            if theirs:
                raise SlimformerError(f"{p.parent} already holds {', '.join(theirs)}, and a .pte's tokenizer files go "
                                      "beside it; give --out in another folder")
        check_out_dir(p.parent / f".{p.name}.check")  # the folder can be written
        return
    check_out_dir(p)


def _training_logs(work: Path) -> dict:
    """The metrics.jsonl and TensorBoard event files of every step that trained, for `out/logs/`."""
    logs = {}
    for step in sorted(p for p in work.iterdir() if p.is_dir()):
        for name in ("metrics.jsonl", "tensorboard", "mlruns"):
            if (step / name).exists():
                logs[f"logs/{step.name}/{name}"] = step / name
    return logs


def _write_out(out, model, final, result, logs: dict) -> None:
    """The model or artifact at `out` with result.json, report.md and the training logs (logs/),
    nothing half-written."""
    import os

    from ..models.saving import atomic_folder, save, write_extra
    from ..report.markdown import render_markdown

    from ..report.html import render_html

    text = {"result.json": result.to_json(), "report.md": render_markdown(result), "report.html": render_html(result)}
    extra = {**text, **logs}
    path = getattr(final, "path", None)
    p = Path(out).expanduser().resolve()
    beside = getattr(final, "companions", lambda dest: {})  # files that go with the artifact (a .pte's tokenizer)
    if path is not None and Path(path).is_file() and p.suffix == Path(path).suffix:  # one file: x.gguf + x.result.json
        p.parent.mkdir(parents=True, exist_ok=True)
        for dest, src in beside(p).items():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        for name, content in text.items():
            dest = p.with_name(f"{p.stem}.{name}")
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.write_text(content)
            os.replace(tmp, dest)
        tmp = p.with_name(f".{p.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, p)
        return
    if path is not None and Path(path).is_file():  # one file into the folder
        def write_file(tmp: Path) -> None:
            shutil.copyfile(path, tmp / Path(path).name)
            for dest, src in beside(tmp / Path(path).name).items():
                shutil.copyfile(src, dest)
            write_extra(tmp, extra)
            (tmp / "slimformer.json").write_text(json.dumps({"artifact": Path(path).name, **final.meta}, default=str))

        atomic_folder(out, write_file)
    elif getattr(final, "folder", None) is not None:  # an exported folder, as written, plus the result
        def write(tmp: Path) -> None:
            shutil.copytree(final.folder, tmp, dirs_exist_ok=True)
            write_extra(tmp, extra)

        atomic_folder(out, write)
    else:  # the model the recipe ends with (a step may have replaced it: finetune's new classifier)
        save(final, Path(out), extra_files=extra)


def _module_bytes(final) -> dict:
    """Bytes per part of a PyTorch model (for the report); {} for an exported artifact."""
    from ..evaluate.efficiency import bytes_by_module

    if getattr(final, "stream", None) is not None:
        return final.stream.bytes_by_module()
    net = getattr(final, "model", None)
    return bytes_by_module(net) if hasattr(net, "state_dict") and not hasattr(final, "disk_bytes") else {}


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
        return Path(tempfile.mkdtemp(prefix=f".slimformer-work-{os.getpid()}-", dir=_work_parent(out))), False
    out = Path(out).expanduser().resolve()
    work = out.parent / f".{out.name}.slimformer-work"
    key = _resume_key(rec, model)
    marker = work / "run.json"
    resumed = work.is_dir() and marker.exists() and _marker_key(marker, len(key["steps"])) == key
    state = _distributed_state()
    if state is not None:  # under torchrun / accelerate launch all processes share one folder
        state.wait_for_everyone()  # every process has read the marker before the main one may replace it
    if not resumed and (state is None or state.is_main_process):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        marker.write_text(json.dumps({"recipe": rec.to_dict(), "model": model.source}, sort_keys=True, default=str))
    if state is not None:
        state.wait_for_everyone()
    return work, resumed


def _distributed_state():
    """accelerate's process state when several processes run this (torchrun, accelerate launch)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # as the trainer's Accelerator


def _resume_key(rec, model) -> dict:
    """What a run's checkpoints depend on: the model and the steps up to the last one that trains
    (a changed step after it, e.g. deploy's candidates, re-runs from the trained model instead of
    throwing the training away)."""
    steps = json.loads(json.dumps(rec.to_dict()["steps"], default=str))
    last = last_training_step(rec)
    last = len(steps) - 1 if last is None else last
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
