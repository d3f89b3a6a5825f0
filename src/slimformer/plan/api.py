"""`sf.plan`: the fastest (or smallest) model inside a quality budget, searched across families.

    result = sf.plan(sf.load(), sf.load_task("stsb", "../shared/data/stsb"), "plan-out",
                     sf.Budget(max_drop=1.0, objective="throughput", time=3600), unlabeled="sentences.txt")

The data is split into a search part (what the sampler sees) and a confirmation part (what the
chosen model is checked on), unless `test` gives the confirmation data. The original is measured
first, then the peers a user would try without slimformer, then the Optuna study runs trials
(candidates without training first) in `workers` processes until the time or trial budget ends.
OUT/ gets study.db (resume with PlanOptions(resume=True)), plan.json, report.html, trials/ and best/."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, SlimformerError
from .budget import Budget
from .peers import PEER_RUNTIMES
from .space import SpaceInfo, available_runtimes, first_candidates
from .study import DIRECTION, VALUE_KEY, open_study, progress_log
from .trial import PlanSpec, Worker, write_task

SPLIT_MIN = 20  # examples in each part, at least


@dataclass
class PlanResult:
    out: str
    budget: dict
    baseline: dict
    trials: list[dict]
    front: list[int]
    best: dict | None
    peers: list[dict] = field(default_factory=list)
    feasible: bool = True
    note: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlanOptions:
    """How a plan runs. test: confirmation data (a Task) instead of a part of the data;
    confirm_fraction: the part of the data kept aside to confirm on; workers: trials at a time on
    this machine (or on Ray); ray_address: "local" or a Ray cluster's address; resume: continue the
    plan in `out`; peers: measure the peers; seed: of the split and the sampler."""

    test: object = None
    confirm_fraction: float = 0.5
    workers: int = 1
    ray_address: str | None = None
    resume: bool = False
    peers: bool = True
    seed: int = 0
    progress: bool = True


def plan(model=None, task=None, out="plan", budget: Budget | None = None, unlabeled=None,
         options: PlanOptions | None = None) -> PlanResult:
    """Search for the best model within `budget` (see module docstring). `model`: a SlimModel,
    a path or hub id (None: the default model); `task`: a data.Task (stsb, classification, lm);
    `unlabeled`: texts or a file of sentences the candidates that train distil on."""
    o = options or PlanOptions()
    out = Path(out).expanduser().resolve()
    log = progress_log() if o.progress else (lambda msg: None)
    start = time.time()  # the time budget counts from here: measuring the original and the peers is part of it
    workers = o.workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers {workers!r}: expected an integer >= 1")
    if o.resume:
        spec = _resume(out, budget, log)
    else:
        if task is None:
            raise ConfigError("plan needs a task to measure quality on (--task and --data)")
        spec = _prepare(model, task, out, budget or Budget(), unlabeled, o, log)
        if o.peers:
            _measure_peers(spec, out, log)
    b = spec.budget_obj
    deadline = start + b.time if b.time else None
    if o.ray_address:
        from .distributed import run_on_ray

        run_on_ray(out, spec, o.ray_address, workers, deadline, b.trials, log)
    else:
        _run_workers(out, workers, deadline, b.trials, log)
    result = finalize(out, log)
    log(f"plan: {len(result.trials)} trials in {time.time() - start:.0f}s; " + result.note)
    return result


def _prepare(model, task, out: Path, budget: Budget, unlabeled, o: PlanOptions, log) -> PlanSpec:
    from ..models.loading import load
    from ..models.saving import save

    if out.exists() and any(out.iterdir()):
        if (out / "study.db").exists():
            raise SlimformerError(f"{out} holds a plan already; continue it with --resume, or give a new folder")
        raise SlimformerError(f"{out} exists and holds files slimformer did not write; give a new or empty folder")
    test, workers, seed = o.test, o.workers, o.seed
    if not 0 < o.confirm_fraction < 1:
        raise ConfigError(f"--confirm-fraction {o.confirm_fraction}: expected a fraction in (0, 1)")
    budget = budget.for_task(task.kind)
    state = out / ".plan"
    state.mkdir(parents=True)
    sm = model if model is not None and not isinstance(model, (str, os.PathLike)) else load(model)
    src = Path(str(sm.source)).expanduser()
    if sm.meta.get("steps") or not src.is_dir():  # changed in memory, or not a folder: the workers read a copy
        save(sm, state / "model")
        src = state / "model"
    kind = sm.kind
    if kind not in ("embedding", "classification", "causal-lm"):
        raise ConfigError(f"plan searches embedding models, classifiers and causal LMs; this model is {kind!r}")
    search, confirm = split_task(task, o.confirm_fraction, seed) if test is None else (task, test)
    if len(search) < 1 or len(confirm) < 1:
        raise ConfigError("the data is too small to split into a search and a confirmation part; give more "
                          "examples or --test FILE")
    texts_file = None
    if unlabeled is not None:
        from ..data import training_texts

        texts = list(unlabeled) if isinstance(unlabeled, (list, tuple)) else training_texts(str(unlabeled))
        texts_file = state / "unlabeled.txt"
        texts_file.write_text("\n".join(t.replace("\n", " ") for t in texts))
    layers = _layer_count(sm)
    full = train_steps(budget)
    info = SpaceInfo(kind=kind, layers=layers, runtimes=available_runtimes() if kind != "causal-lm" else (),
                     can_train=texts_file is not None, full_steps=full, rung_steps=max(1, full // 4),
                     hidden=int(getattr(sm.model.config, "hidden_size", 384) or 384))
    threads = max(1, (os.cpu_count() or 1) // workers)
    spec = PlanSpec(model=str(src), task_kind=task.kind, search=write_task(search, state / "search.json"),
                    confirm=write_task(confirm, state / "confirm.json"), budget=budget.to_dict(), info=info.to_dict(),
                    unlabeled=str(texts_file) if texts_file else None, threads=threads, seed=seed)
    unit = (lambda t: f"{sum(x.count(chr(10)) + 1 for x in t.examples)} lines") if task.kind == "lm" else (
        lambda t: f"{len(t)} examples")
    log(f"plan: {budget.describe()}; {unit(search)} to search on, {unit(confirm)} to confirm on; "
        f"{threads} thread(s) per trial")
    spec.baseline = _baseline(spec)
    (state / "spec.json").write_text(spec.to_json())
    study = open_study(out, budget, seed)
    for params in first_candidates(info, budget.objective):
        study.enqueue_trial(params, skip_if_exists=True)
    m = budget.metric(task.kind)
    log(f"original: {m} {spec.baseline['search_' + m]:.2f} (search) / {spec.baseline['confirm_' + m]:.2f} "
        f"(confirmation), {spec.baseline['bytes'] / 1e6:.1f} MB")
    return spec


def train_steps(budget: Budget) -> int:
    """Distillation steps of a student trained to full length, from the search budget: about a
    quarter of the time for one student (batch 64; a 3-layer MiniLM student runs ~2 steps/s on 2
    cores), so the study sees several; a quarter of them is the short rung."""
    secs = budget.time if budget.time is not None else 3600.0
    return int(min(2000, max(8, secs / 4 * 1.5)))


def _resume(out: Path, budget: Budget | None, log) -> PlanSpec:
    import optuna

    path = out / ".plan" / "spec.json"
    if not path.exists():
        raise SlimformerError(f"{out}: no plan to resume (no .plan/spec.json); start one without --resume")
    spec = PlanSpec.read(path)
    if budget is not None:  # a new search budget for this run; the objective and quality budget are the plan's own
        spec.budget = {**spec.budget, "time": budget.time, "trials": budget.trials}
        path.write_text(spec.to_json())
    study = open_study(out, spec.budget_obj, spec.seed)
    stale = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        _stop(study, t, "interrupted (the plan was stopped); not resumed")
        stale += 1
    # first candidates that never ran (skipped for lack of time, or interrupted) are tried first again
    S = optuna.trial.TrialState
    done = {_key(t.params or t.system_attrs.get("fixed_params", {}))  # a waiting trial: its enqueued params
            for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.WAITING, S.RUNNING))}
    again = [p for p in first_candidates(SpaceInfo(**spec.info), spec.budget["objective"]) if _key(p) not in done]
    for params in again:
        study.enqueue_trial(params, skip_if_exists=False)
    log(f"resuming the plan in {out}: {len(study.trials)} trials so far" + (f", {stale} interrupted" if stale else "")
        + (f"; {len(again)} first candidate(s) not run yet queued again" if again else ""))
    return spec


def _key(params: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items()))


def _stop(study, frozen, why: str) -> None:
    """Mark a trial left RUNNING by a killed worker as failed, with why."""
    import optuna

    optuna.trial.Trial(study, frozen._trial_id).set_user_attr("why", why)  # a live handle on the stored trial
    study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)


def _layer_count(sm) -> int:
    from ..adapters import get_adapter

    try:
        return len(get_adapter(sm.model).layers(sm.model))
    except Exception:  # an architecture without an adapter: no student candidates
        return 1


def split_task(task, confirm_fraction: float, seed: int):
    """(search, confirmation) parts: a seeded shuffle of the examples (contiguous halves of the
    text for language modelling, so windows stay whole)."""
    from dataclasses import replace

    if task.kind == "lm":
        lines = "\n".join(task.examples).split("\n")
        cut = int(round(len(lines) * (1 - confirm_fraction)))
        return (replace(task, examples=["\n".join(lines[:cut])], meta=dict(task.meta)),
                replace(task, examples=["\n".join(lines[cut:])], meta=dict(task.meta)))
    idx = list(range(len(task.examples)))
    random.Random(seed).shuffle(idx)
    cut = int(round(len(idx) * (1 - confirm_fraction)))
    if cut < SPLIT_MIN or len(idx) - cut < SPLIT_MIN:
        raise ConfigError(f"{len(idx)} examples are too few to split into search and confirmation parts of at least "
                          f"{SPLIT_MIN} each; give more data or --test FILE")
    pick = lambda ids: replace(task, examples=[task.examples[i] for i in sorted(ids)], meta=dict(task.meta))  # noqa: E731
    return pick(idx[:cut]), pick(idx[cut:])


def _baseline(spec: PlanSpec) -> dict:
    w = Worker(spec)
    spec.baseline = {"bytes": 1, "peak_memory_mb": 1}
    size = w.size(w.original)
    out = {**w.quality(w.original, w.search, "search"), **w.quality(w.original, w.confirm, "confirm"),
           "bytes": size["bytes"], "peak_memory_mb": size["peak_memory_mb"]}
    return out


def _measure_peers(spec: PlanSpec, out: Path, log) -> None:
    from .peers import measure_peers

    spec_path = out / ".plan" / "peers.json"
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        peers = measure_peers(spec, out / ".plan" / "peers", log)
    finally:
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
    spec_path.write_text(json.dumps(peers, indent=2, default=str))


def _run_workers(out: Path, workers: int, deadline: float | None, trials: int | None, log) -> None:
    """Worker processes share the study; killed at the deadline (a trial running then is lost, the
    best so far is already in best/)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}  # one line per trial, not a bar per step
    procs = [subprocess.Popen([sys.executable, "-m", "slimformer.plan.worker", str(out), str(deadline or 0),
                               str(trials or 0), str(i)], env=env) for i in range(workers)]
    try:
        while any(p.poll() is None for p in procs):
            if deadline is not None and time.time() >= deadline:
                log("plan: time is up; stopping the trials still running")
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def finalize(out: Path, log=print) -> PlanResult:
    """plan.json, the Pareto front, best/ checked against the confirmation part, report.html."""
    import optuna

    from ..report.pareto import pareto_front

    spec = PlanSpec.read(out / ".plan" / "spec.json")
    b = spec.budget_obj
    study = open_study(out, b, spec.seed)
    metric = b.metric(spec.task_kind)
    lower = metric == "perplexity"
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = dict(t.user_attrs)
        if t.state == optuna.trial.TrialState.RUNNING:  # killed at the deadline
            _stop(study, t, "stopped at the time limit")
            state, a["why"] = "FAIL", "stopped at the time limit"
        else:
            state = t.state.name
        if state == "WAITING":
            continue
        if a.get("idle") or str(a.get("why", "")).startswith(("the same candidate as", "not started")):
            continue  # a candidate not run (a repeat, or no time left for it)
        peer = PEER_RUNTIMES.get(t.params.get("runtime")) if t.params.get("family") == "ptq" else None
        rows.append({"trial": t.number, "state": state, "label": a.get("label"), "steps": a.get("steps"), "peer": peer,
                     "params": t.params, "value": t.value, "feasible": a.get("constraint", 1) <= 0,
                     "confirmed": a.get("confirm_constraint", 1) <= 0,
                     **{k: v for k, v in a.items() if k not in ("label", "steps")}})
    done = [r for r in rows if r["state"] == "COMPLETE"]
    peers = json.loads((out / ".plan" / "peers.json").read_text()) if (out / ".plan" / "peers.json").exists() else []
    sign = 1 if DIRECTION[b.objective] == "maximize" else -1
    pts = [(r[f"search_{metric}"] * (-1 if lower else 1), sign * r[VALUE_KEY[b.objective]]) for r in done]
    front_idx = pareto_front(pts) if pts else []
    front = [done[i]["trial"] for i in front_idx]
    best = _choose_best(done, b)
    kept = json.loads((out / "best" / "plan_best.json").read_text()) if (out / "best" / "plan_best.json").exists() else None
    if best is None:
        note = "no candidate met the budget on both parts"
        if kept is not None:
            note += (f"; the closest, trial {kept['trial']} ({kept['label']}), is saved in best/ with its figures "
                     f"({kept['miss']:.3g} beyond the budget)")
    else:
        if kept is None or kept["trial"] != best["trial"]:
            log(f"plan: best/ holds trial {kept and kept['trial']}, the best is trial {best['trial']} (a worker was "
                "stopped while saving it)")
        note = (f"best: trial {best['trial']} ({best['label']}), {VALUE_KEY[b.objective]} "
                f"{best[VALUE_KEY[b.objective]]:.3f}, {metric} {best[f'confirm_{metric}']:.2f} on the confirmation "
                f"part (original {spec.baseline[f'confirm_{metric}']:.2f}); saved in {out / 'best'}")
    result = PlanResult(str(out), b.to_dict(), spec.baseline, rows, front, best, peers, best is not None, note)
    tmp = out / ".plan.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    os.replace(tmp, out / "plan.json")
    from .report import write_plan_report

    write_plan_report(out, result, spec)
    return result


def _choose_best(done: list[dict], b: Budget) -> dict | None:
    """The best trial inside the budget on the search part whose confirmed quality holds too (the
    workers saved it in best/ as it finished)."""
    ok = [r for r in done if r["feasible"] and r["confirmed"]]
    if not ok:
        return None
    return sorted(ok, key=lambda r: r["value"], reverse=DIRECTION[b.objective] == "maximize")[0]
