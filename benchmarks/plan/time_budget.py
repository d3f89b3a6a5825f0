"""The planner's search budget held, and a killed plan resumed, as a user runs it (the CLI).

    python benchmarks/plan/time_budget.py              # --time 5m on MiniLM / STS-B, then kill -9 and --resume

1. `slimformer plan --time 5m` (MiniLM, STS-B dev, the distillation sentences as --unlabeled):
   its wall time, from the command's start to its exit, and whether best/ holds a model.
2. `slimformer plan --time 10m`, killed with SIGKILL (the whole process group) once a trial has
   completed (or after --kill-after seconds), then `slimformer plan --resume --time 2m`: the trials
   completed before the kill are still in the study and the resumed run completes more.
Writes benchmarks/results/plan_time_budget.{json,md}.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import base_parser, unlabeled_sentences, write  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "plan"
SLIMFORMER = [sys.executable, "-m", "slimformer.cli"]


def trials(out: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(out / "study.db")
    try:
        return con.execute("select number, state from trials order by number").fetchall()
    finally:
        con.close()


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--time", default="5m")
    ap.add_argument("--kill-after", type=float, default=600)
    a = ap.parse_args()
    import shutil

    sents = CACHE / "unlabeled.txt"
    CACHE.mkdir(parents=True, exist_ok=True)
    sents.write_text("\n".join(unlabeled_sentences(a.data)))
    data = str(a.data / "stsb" / "stsb-en-dev.csv")
    common = ["--task", "stsb", "--data", data, "--unlabeled", str(sents), "--max-drop", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}

    out1 = CACHE / "budget-5m"
    shutil.rmtree(out1, ignore_errors=True)
    t0 = time.time()
    r = subprocess.run(SLIMFORMER + ["plan", *common, "--time", a.time, "--out", str(out1)], env=env,
                       capture_output=True, text=True)
    wall = time.time() - t0
    plan1 = json.loads((out1 / "plan.json").read_text()) if (out1 / "plan.json").exists() else {}
    best1 = json.loads((out1 / "best" / "plan_best.json").read_text()) if (out1 / "best" / "plan_best.json").exists() else None

    out2 = CACHE / "budget-kill"
    shutil.rmtree(out2, ignore_errors=True)
    p = subprocess.Popen(SLIMFORMER + ["plan", *common, "--time", "10m", "--out", str(out2)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t_kill = time.time()
    while time.time() - t_kill < a.kill_after:  # kill once a trial is done, as a crash mid-plan would
        if (out2 / "study.db").exists() and any(s == "COMPLETE" for _, s in trials(out2)):
            break
        time.sleep(1)
    killed_at = time.time() - t_kill
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = trials(out2)
    best_after_kill = (out2 / "best" / "plan_best.json").exists()
    t1 = time.time()
    r2 = subprocess.run(SLIMFORMER + ["plan", "--resume", "--time", "2m", "--out", str(out2)], env=env,
                        capture_output=True, text=True)
    resume_wall = time.time() - t1
    after = trials(out2)
    kept = [n for n, s in before if s == "COMPLETE"]
    payload = {"time_budget": a.time, "wall_seconds": wall, "exit": r.returncode, "trials": len(plan1.get("trials", [])),
               "best": best1, "note": plan1.get("note"), "killed_after_seconds": killed_at,
               "trials_before_kill": before, "best_saved_before_kill": best_after_kill, "resume_exit": r2.returncode,
               "resume_wall_seconds": resume_wall, "trials_after_resume": after,
               "completed_kept": all((n, "COMPLETE") in after for n in kept),
               "stderr_tail": r.stderr[-1500:], "resume_stderr_tail": r2.stderr[-1500:]}
    md = "\n".join([
        "# slimformer plan: the time budget and resuming after kill -9", "",
        f"`python benchmarks/plan/time_budget.py` ({a.threads} threads; MiniLM, STS-B dev, --max-drop 1.0).", "",
        "| check | result |", "|---|---|",
        f"| `plan --time {a.time}`: wall time from start to exit | {wall:.0f} s (limit {_secs(a.time) * 1.1:.0f} s), "
        f"exit {r.returncode}, {payload['trials']} trials |",
        f"| best so far saved | {'yes: trial ' + str(best1['trial']) + ' (' + best1['label'] + ')' if best1 else 'no'} |",
        f"| killed with SIGKILL after {killed_at:.0f} s | {len(kept)} trial(s) completed, best/ "
        f"{'saved' if best_after_kill else 'missing'} |",
        f"| `plan --resume --time 2m` | exit {r2.returncode} in {resume_wall:.0f} s; completed trials {len(kept)} -> "
        f"{sum(s == 'COMPLETE' for _, s in after)}, the earlier ones kept: {payload['completed_kept']}; "
        f"interrupted trials marked: {sum(s == 'FAIL' for _, s in after)} |", ""])
    write("plan_time_budget", payload, md)


def _secs(t: str) -> float:
    from slimformer.plan import parse_time

    return parse_time(t)


if __name__ == "__main__":
    main()
