"""The plan's trials on a Ray cluster: Ray Tune with its Optuna searcher over the same define-by-run
space, the same Optuna storage (OUT/study.db, so the plan's files, its report and `--resume` are
the same as on one machine), each trial one Tune trial with its pinned CPUs.

`address`: "local" starts a Ray instance on this machine with `workers` trial slots; anything else
is passed to `ray.init(address=...)` (the plan's folder must then be on storage every node sees)."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.errors import SlimformerError
from .trial import PlanSpec


def _require_ray():
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch  # noqa: F401
    except ImportError:
        raise SlimformerError("--ray needs Ray Tune: pip install 'slimformer[ray]'") from None


def trainable(config: dict) -> dict:
    """One Tune trial: the candidate of `config` (the sampler's params) built and measured."""
    import os

    import optuna
    import torch

    from .space import SpaceInfo, suggest
    from .study import rung_verdict
    from .trial import Pruned, Worker

    out = Path(config.pop("__plan_out"))
    spec = PlanSpec.read(out / ".plan" / "spec.json")
    torch.set_num_threads(spec.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    budget, info = spec.budget_obj, SpaceInfo(**spec.info)
    cand = suggest(optuna.trial.FixedTrial(config), info, budget.objective)
    def promote(fig):
        return rung_verdict(spec, fig)

    base = {"label": cand.label, "steps": cand.steps(), "trains": cand.trains}
    folder = out / "trials" / f"ray-{time.time_ns()}"
    try:
        fig = Worker(spec).run(cand, folder, promote if cand.trains else None)
    except Pruned as p:
        return {**base, **p.figures, "pruned": True, "why": str(p)}
    return {**base, **fig, "pruned": False, "folder": str(folder)}


def run_on_ray(out: Path, spec: PlanSpec, address: str, workers: int, deadline: float | None, trials: int | None,
               log) -> None:
    _require_ray()
    import optuna
    import ray
    from ray import tune

    from .space import SpaceInfo
    from .study import DIRECTION, STUDY_NAME, study_storage, value_of

    budget, info = spec.budget_obj, SpaceInfo(**spec.info)
    storage = study_storage(out)
    search = _search_class()(space=_Space(info, budget.objective), metric="value", mode="max" if DIRECTION[budget.objective] == "maximize" else "min",
                     points_to_evaluate=None,  # the study holds the first candidates (enqueued when it was made)
                     study_name=STUDY_NAME, storage=storage, seed=spec.seed)
    search.plan_out = str(out)
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=workers * spec.threads, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)

    def run(config):
        res = trainable({**config, "__plan_out": str(out)})
        value = 0.0 if res.get("pruned") else value_of(budget, res)
        return {**res, "value": value}

    import os

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the plan writes its own records
    remaining = None if deadline is None else max(1.0, deadline - time.time())
    tuner = tune.Tuner(
        tune.with_resources(run, {"cpu": spec.threads}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials or -1, max_concurrent_trials=workers,
                                    time_budget_s=remaining),
        run_config=tune.RunConfig(storage_path=str((out / ".plan" / "ray").resolve()), name="plan", verbose=0),
    )
    log(f"plan: running trials on Ray ({address}), {workers} at a time")
    tuner.fit()


class _Space:
    """The define-by-run space for Ray's searcher (picklable: Tune checkpoints its searcher)."""

    def __init__(self, info, objective: str):
        self.info, self.objective = info, objective

    def __call__(self, trial):
        from .space import suggest

        suggest(trial, self.info, self.objective)
        return None


def _search_class():
    """Optuna's searcher, with each trial's figures stored on its Optuna trial (as the local workers
    store them), a short-rung stop recorded as pruned, and the best kept in best/. Made on first use
    (Ray is optional) and bound to this module's name so Tune can pickle it."""
    cls = globals().get("_PlanSearch")
    if cls is not None:
        return cls
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from .study import _keep_if_best, progress_log, value_of

    class _PlanSearch(OptunaSearch):
        plan_out = ""

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot = self._ot_trials.get(trial_id)
            if ot is None or not result or error:
                return super().on_trial_complete(trial_id, result, error)
            out = Path(self.plan_out)
            spec = PlanSpec.read(out / ".plan" / "spec.json")
            budget = spec.budget_obj
            for k, v in result.items():
                if k in _ATTRS or k.startswith(("search_", "confirm_")):
                    ot.set_user_attr(k, v)
            if result.get("pruned"):
                self._ot_trials.pop(trial_id)
                self._ot_study.tell(ot, state=optuna.trial.TrialState.PRUNED)
                return None
            metric = budget.metric(spec.task_kind)
            ls = budget.loss(spec.task_kind, spec.baseline[f"search_{metric}"], result[f"search_{metric}"])
            lc = budget.loss(spec.task_kind, spec.baseline[f"confirm_{metric}"], result[f"confirm_{metric}"])
            ot.set_user_attr("constraint", ls)
            ot.set_user_attr("confirm_constraint", lc)
            ot.set_constraint("quality", ls)
            folder = Path(result["folder"])
            target = out / "trials" / f"{ot.number:04d}"
            if folder.exists() and not target.exists():
                folder.rename(target)
            _keep_if_best(out, spec, ot.number, _Done(result), result, value_of(budget, result), ls, lc)
            progress_log()(f"trial {ot.number}: {result['label']}: {metric} {result[f'search_{metric}']:.2f} "
                           f"(search), {value_of(budget, result):.3f}")
            return super().on_trial_complete(trial_id, result, error)

    _PlanSearch.__qualname__ = "_PlanSearch"
    globals()["_PlanSearch"] = _PlanSearch
    return _PlanSearch


class _Done:
    """What _keep_if_best reads of a candidate, from a finished Tune trial's result."""

    def __init__(self, result: dict):
        self.label, self._steps = result["label"], result["steps"]

    def steps(self) -> list:
        return self._steps


_ATTRS = ("label", "steps", "trains", "why", "rung", "seconds", "throughput_x", "latency_x", "latency_ms", "throughput",
          "bytes", "bytes_x", "peak_memory_mb", "memory_x")
