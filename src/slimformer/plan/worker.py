"""A worker process of a plan: `python -m slimformer.plan.worker OUT DEADLINE MAX_TRIALS ID`.

Opens the plan's study (OUT/study.db) and runs trials until the deadline (unix seconds; 0: none)
or the plan's trial count is reached. Several run side by side on one machine, each with its
pinned threads; the plan's process kills them at the deadline. It dies with its parent."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL when the plan process goes away (kill -9 included)
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def work(out: Path, deadline: float | None, max_trials: int | None, worker_id: int = 0) -> None:
    import optuna

    from .study import make_objective, open_study, progress_log
    from .trial import PlanSpec, Worker

    spec = PlanSpec.read(out / ".plan" / "spec.json")
    study = open_study(out, spec.budget_obj, seed=spec.seed + 1000 * worker_id, create=False)
    worker = Worker(spec)
    log = progress_log(f"[worker {worker_id}] " if worker_id else "")
    callbacks = []
    if max_trials:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        callbacks.append(optuna.study.MaxTrialsCallback(max_trials, states=states))
        done = len(study.get_trials(deepcopy=False, states=states))
        if done >= max_trials:
            return
    timeout = None if not deadline else max(0.0, deadline - time.time())
    if timeout == 0:
        return
    study.optimize(make_objective(worker, spec, out, deadline or None, log, worker_id), timeout=timeout, callbacks=callbacks,
                   catch=(Exception,), gc_after_trial=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    out, deadline, max_trials, wid = Path(argv[0]), float(argv[1]), int(argv[2]), int(argv[3]) if len(argv) > 3 else 0
    work(out, deadline or None, max_trials or None, wid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
