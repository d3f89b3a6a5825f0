"""`slimformer plan`: parses the budget and calls slimformer.plan."""
from __future__ import annotations

import argparse

from .common import MODEL_HELP, positive, positive_float

PLAN_HELP = ("find the fastest (or smallest) model within a quality budget: an Optuna study over runtimes, int8, "
             "students, pruning and factorization, each trial a recipe run measured on this machine")


def add_parsers(sub) -> None:
    p = sub.add_parser("plan", help=PLAN_HELP, description=PLAN_HELP + ". The data is split into a search part and a "
                       "confirmation part (or give --test); the best model within the budget on both is saved in "
                       "OUT/best/ with the recipe.yaml that `compress --recipe` re-runs, and OUT/report.html draws "
                       "every trial and the peers (the original, ONNX Runtime and OpenVINO int8, bf16, model2vec) on "
                       "one front. Interrupted? `plan --resume --out OUT` continues the same study.")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--task", choices=["stsb", "classification", "lm"], help="what quality is measured on")
    p.add_argument("--data", help="the task's data (file or folder); split into search and confirmation parts")
    p.add_argument("--test", help="confirmation data of the same task instead of a part of --data")
    p.add_argument("--limit", type=positive, help="use only the first N examples of --data")
    p.add_argument("--unlabeled", help="sentences (one per line; several files joined with ',') that candidates "
                   "which train (distilled students) train on; without it only candidates without training are tried")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--max-drop", type=float, help="quality budget: at most this many task-metric points below the "
                   "original (Spearman / accuracy x100; default 1.0)")
    q.add_argument("--min-recovery", type=float, help="quality budget: at least this fraction of the original's "
                   "quality (e.g. 0.99)")
    q.add_argument("--max-ppl-ratio", type=float, help="quality budget for language models: perplexity at most this "
                   "times the original's (default 1.10)")
    p.add_argument("--objective", default="throughput", choices=["throughput", "latency", "bytes", "memory"],
                   help="what to optimize, measured here as a ratio to the original (default throughput)")
    p.add_argument("--time", default=None, help="search budget as wall-clock time: 90s, 5m, 1h, 1h30m (default 60m "
                   "unless --trials is given)")
    p.add_argument("--trials", type=positive, help="search budget as a number of trials (whichever of --time and "
                   "--trials ends first)")
    p.add_argument("--batch-size", type=positive, default=32, help="batch the throughput is measured at (default 32)")
    p.add_argument("--seq-len", type=positive, default=128, help="sequence length speed is measured at (default 128)")
    p.add_argument("--workers", type=positive, default=1, help="trials run in parallel on this machine, the cores "
                   "split between them (default 1)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the trials on a Ray cluster (Ray Tune with the Optuna "
                   "searcher; 'local' starts one here); pip install 'slimformer[ray]'")
    p.add_argument("--confirm-fraction", type=positive_float, default=0.5,
                   help="fraction of --data kept aside to confirm the chosen model on (default 0.5)")
    p.add_argument("--no-peers", action="store_true", help="skip measuring the peers (the original is measured anyway)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the sampler (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the plan in --out (after an interruption); a new "
                   "--time / --trials is the budget of this run")
    p.add_argument("--out", required=True, help="folder for study.db, plan.json, report.html, trials/ and best/")
    p.set_defaults(run=cmd_plan)


def cmd_plan(a: argparse.Namespace) -> None:
    from .. import plan
    from ..core.errors import SlimformerError
    from ..plan import Budget, PlanOptions, parse_time
    from .common import task_from_args

    time = parse_time(a.time) if a.time is not None else (None if a.trials else 3600.0)
    budget = Budget(max_drop=a.max_drop, min_recovery=a.min_recovery, max_ppl_ratio=a.max_ppl_ratio,
                    objective=a.objective, time=time, trials=a.trials, batch_size=a.batch_size, seq_len=a.seq_len)
    if a.resume:
        plan(out=a.out, budget=budget, options=PlanOptions(resume=True, workers=a.workers, ray_address=a.ray))
        print(f"plan: see {a.out}/report.html and {a.out}/best/")
        return
    if a.task is None:
        raise SlimformerError("plan needs --task (stsb, classification, lm) and --data to measure quality on")
    a.split = None
    task = task_from_args(a)
    test = None
    if a.test:
        from .. import load_task

        test = load_task(a.task, a.test)
    from .. import load

    model = load(a.model) if a.model else load()
    res = plan(model, task, a.out, budget, a.unlabeled, PlanOptions(test=test, workers=a.workers, ray_address=a.ray,
                                                                    confirm_fraction=a.confirm_fraction, seed=a.seed,
                                                                    peers=not a.no_peers))
    print(res.note)
    print(f"plan: {len(res.trials)} trials; see {a.out}/report.html, {a.out}/plan.json and {a.out}/best/")
