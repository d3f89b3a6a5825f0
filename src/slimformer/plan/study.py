"""The Optuna study: storage in OUT/study.db (SQLite, so `--resume` continues it and several
worker processes share it), a TPE sampler with the quality budget as a constraint, the objective
of each trial, the multi-fidelity gate, and the best model so far kept in OUT/best/."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from .budget import Budget
from .space import SpaceInfo, suggest
from .trial import PlanSpec, Pruned

DIRECTION = {"throughput": "maximize", "latency": "maximize", "bytes": "minimize", "memory": "minimize"}
VALUE_KEY = {"throughput": "throughput_x", "latency": "latency_x", "bytes": "bytes_x", "memory": "memory_x"}
STUDY_NAME = "slimformer-plan"
# how far beyond the budget a candidate may be after its short rung (a quarter of its steps) and
# still be trained to full length, in the budget's unit: MiniLM's 3-layer student was 3.4 points
# below the original after 337 of 1,350 steps, 0.9 below after 3,300
RUNG_SLACK = {"max_drop": 3.0, "min_recovery": 0.03, "max_ppl_ratio": 0.15}


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def study_storage(out: Path):
    """OUT/study.db as an Optuna storage whose trial-state changes hold a file lock (plan/storage.py:
    without it two workers on SQLite could take the same enqueued trial)."""
    from .storage import LockedStorage

    (out / ".plan").mkdir(parents=True, exist_ok=True)
    return LockedStorage(storage_url(out), str((out / ".plan" / "state.lock").resolve()))


def open_study(out: Path, budget: Budget, seed: int = 0, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=4)
    kw = dict(study_name=STUDY_NAME, storage=study_storage(out), sampler=sampler)
    if create:
        return optuna.create_study(direction=DIRECTION[budget.objective], load_if_exists=True, **kw)
    return optuna.load_study(**kw)


def value_of(budget: Budget, figures: dict) -> float:
    return float(figures[VALUE_KEY[budget.objective]])


def better(budget: Budget, a: float, b: float | None) -> bool:
    return b is None or (a > b if DIRECTION[budget.objective] == "maximize" else a < b)


def make_objective(worker, spec: PlanSpec, out: Path, deadline: float | None, log=print, worker_id: int = 0):
    import optuna

    budget, info = spec.budget_obj, SpaceInfo(**spec.info)
    kind, metric = spec.task_kind, budget.metric(spec.task_kind)
    base = spec.baseline

    def loss(figures: dict, part: str) -> float:
        return budget.loss(kind, base[f"{part}_{metric}"], figures.get(f"{part}_{metric}"))

    repeats = [0]

    def objective(trial):
        cand = suggest(trial, info, budget.objective)
        same = _same_params(trial)
        if same is not None:  # the sampler asked for a candidate already measured: its figures, no work
            _idle(trial, repeats, f"the same candidate as trial {same.number}")
        if deadline is not None and cand.trains:
            need = _typical_seconds(trial.study, trains=True)
            if need and time.time() + need > deadline:
                _idle(trial, repeats, f"not started: a training candidate takes ~{need:.0f}s, "
                                      f"{max(0, deadline - time.time()):.0f}s left")
        repeats[0] = 0
        trial.set_user_attr("label", cand.label)
        trial.set_user_attr("worker", worker_id)
        trial.set_user_attr("steps", cand.steps())
        trial.set_user_attr("trains", cand.trains)
        folder = out / "trials" / f"{trial.number:04d}"

        def promote(fig):
            trial.report(-loss(fig, "search"), step=int(info.rung_steps))
            return rung_verdict(spec, fig)

        log(f"trial {trial.number}: {cand.label} ...")
        try:
            fig = worker.run(cand, folder, promote if cand.trains else None)
        except Pruned as p:
            for k, v in p.figures.items():
                trial.set_user_attr(k, v)
            trial.set_user_attr("why", str(p))
            shutil.rmtree(folder, ignore_errors=True)
            log(f"trial {trial.number}: {cand.label}: stopped at the short rung: {p}")
            raise optuna.TrialPruned(str(p)) from None
        for k, v in fig.items():
            trial.set_user_attr(k, v)
        trial.set_constraint("quality", loss(fig, "search"))  # the sampler's constraint: search part only
        trial.set_user_attr("constraint", loss(fig, "search"))
        trial.set_user_attr("confirm_constraint", loss(fig, "confirm"))
        value = value_of(budget, fig)
        kept = _keep_if_best(out, spec, trial.number, cand, fig, value, loss(fig, "search"), loss(fig, "confirm"))
        if not kept:
            _drop_weights(folder)
        ok = "within" if max(loss(fig, "search"), loss(fig, "confirm")) <= 0 else "outside"
        saved = " -> saved in best/" + ("" if ok == "within" else " (closest so far, outside the budget)")
        log(f"trial {trial.number}: {cand.label}: {metric} {fig[f'search_{metric}']:.2f} (search; "
            f"{fig[f'confirm_{metric}']:.2f} confirmation), {VALUE_KEY[budget.objective]} {value:.3f}, "
            f"{fig['seconds']:.0f}s, {ok} the budget" + (saved if kept else ""))
        return value

    return objective


MAX_REPEATS = 30  # candidates in a row that were not run (measured already, or no time left for them): stop


def _idle(trial, repeats: list, why: str):
    """A candidate not run: recorded why, pruned; after MAX_REPEATS in a row the study stops (the
    space is exhausted, or what is left does not fit in the time)."""
    import optuna

    repeats[0] += 1
    if repeats[0] > MAX_REPEATS:
        trial.study.stop()
    trial.set_user_attr("why", why)
    trial.set_user_attr("idle", True)
    raise optuna.TrialPruned()


def _same_params(trial):
    import optuna

    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.RUNNING)):
        if t.number != trial.number and t.params == trial.params:
            return t
    return None


def rung_verdict(spec: PlanSpec, fig: dict) -> str | None:
    """Why a student stops at its short rung (more than RUNG_SLACK beyond the budget), or None."""
    budget, rung = spec.budget_obj, spec.info.get("rung_steps")
    metric = budget.metric(spec.task_kind)
    over = budget.loss(spec.task_kind, spec.baseline[f"search_{metric}"], fig.get(f"search_{metric}"))
    slack = RUNG_SLACK[_budget_kind(budget)]
    if over > slack:
        return (f"{metric} {fig[f'search_{metric}']:.2f} after {rung} steps is {over:.2f} beyond the budget "
                f"(promoted only within {slack:g})")
    return None


def _budget_kind(b: Budget) -> str:
    return "max_drop" if b.max_drop is not None else "max_ppl_ratio" if b.max_ppl_ratio is not None else "min_recovery"


def _typical_seconds(study, trains: bool) -> float | None:
    import optuna

    secs = [t.user_attrs["seconds"] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("trains") == trains and "seconds" in t.user_attrs]
    return sorted(secs)[(len(secs) - 1) // 2] if secs else None  # the lower median: one slow trial (a busy
    # machine) must not keep every later candidate from starting


def plan_lock(out: Path):
    from ..models.saving import flock

    return flock(out / ".plan" / "lock")


def _keep_if_best(out: Path, spec: PlanSpec, number: int, cand, fig: dict, value: float, loss_search: float,
                  loss_confirm: float) -> bool:
    """Copy the trial's model to OUT/best/ when it is inside the budget on both parts and beats the
    best so far; while nothing is inside, keep the closest to the budget there (marked so). Several
    workers: under a file lock."""
    budget = spec.budget_obj
    inside, miss = loss_search <= 0 and loss_confirm <= 0, max(loss_search, loss_confirm)
    with plan_lock(out):
        meta = out / "best" / "plan_best.json"
        old = json.loads(meta.read_text()) if meta.exists() else None
        if old is None:
            keep = True
        elif inside:
            keep = not old.get("inside") or better(budget, value, old["value"])
        else:
            keep = not old.get("inside") and miss < old.get("miss", math.inf)
        if keep:
            save_best(out, number, cand.label, cand.steps(), fig, value, inside, miss)
    return keep


def _pin_choices(steps: list, model_dir: Path) -> list:
    """The steps with what the trial chose on this machine written in, so recipe.yaml rebuilds the
    same model: an ONNX export's optimize="auto" (the optimized or plain graph, whichever ran faster
    then; timing noise could pick the other one on a re-run, ~1e-5 apart)."""
    from ..export.options import ONNX_META_FILE

    meta = model_dir / ONNX_META_FILE
    chosen = json.loads(meta.read_text()).get("optimize") if meta.exists() else None
    if chosen is None:
        return steps
    return [{**st, "optimize": bool(chosen)} if isinstance(st, dict) and st.get("method") == "onnx"
            and st.get("optimize", "auto") == "auto" else st for st in steps]


def save_best(out: Path, number: int, label: str, steps: list, fig: dict, value: float, inside: bool,
              miss: float) -> None:
    import yaml

    from ..models.saving import atomic_folder

    src = out / "trials" / f"{number:04d}" / "model"
    recipe = {"name": f"plan-trial-{number}", "description": f"found by slimformer plan: {label}",
              "steps": _pin_choices(steps, src)}

    def write(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        (tmp / "plan_best.json").write_text(json.dumps({"trial": number, "label": label, "value": value,
                                                        "inside": inside, "miss": miss, "figures": fig},
                                                       indent=2, default=str))

    atomic_folder(out / "best", write, markers=("plan_best.json",))


def _drop_weights(folder: Path) -> None:
    """A trial that is not the best keeps its result.json and report, not its weights."""
    model = folder / "model"
    if not model.is_dir():
        return
    for f in model.iterdir():
        if f.name not in ("result.json", "report.md"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()


def progress_log(prefix: str = ""):
    def log(msg: str) -> None:
        print(f"{prefix}{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    return log
