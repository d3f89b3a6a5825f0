"""The planner end to end on a tiny encoder (seconds): the study runs trials as recipe runs, keeps
the best within the budget in OUT/best/ with a recipe that re-runs to the same model, survives
kill -9 and resumes the same study, and runs on a local Ray instance."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.core.errors import ConfigError
from slimformer.plan import Budget, parse_time, split_task
from slimformer.testing import tiny_slim

pytest.importorskip("optuna")
pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "stsb" / "stsb-en-dev.csv"


def _task(n=120):
    if DATA.exists():
        return sf.load_task("stsb", str(DATA), limit=n)
    texts = sf.sample_sentences()
    return sf.Task("stsb", [(texts[i], texts[i + 1], float(i % 5)) for i in range(n)], "sample")


def _trials(out: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(out / "study.db")
    try:
        return con.execute("select number, state from trials order by number").fetchall()
    finally:
        con.close()


def test_budget_units_and_bad_budgets():
    assert parse_time("5m") == 300 and parse_time("1h30m") == 5400 and parse_time("90s") == 90 and parse_time(12) == 12
    for bad in ("", "abc", "-5m", "0s", "5 minutes"):
        with pytest.raises(ConfigError, match="--time"):
            parse_time(bad)
    with pytest.raises(ConfigError, match=r"--max-drop -1.0: expected task-metric points in \[0, 100\]"):
        Budget(max_drop=-1.0)
    with pytest.raises(ConfigError, match=r"--max-drop 150"):
        Budget(max_drop=150)
    with pytest.raises(ConfigError, match=r"--min-recovery 1.2"):
        Budget(min_recovery=1.2)
    with pytest.raises(ConfigError, match="--max-ppl-ratio 0.9"):
        Budget(max_ppl_ratio=0.9)
    with pytest.raises(ConfigError, match="--objective 'speed'; accepted: throughput, latency, bytes, memory"):
        Budget(objective="speed")
    with pytest.raises(ConfigError, match="one quality budget"):
        Budget(max_drop=1.0, min_recovery=0.99)
    with pytest.raises(ConfigError, match="--max-ppl-ratio applies to language models"):
        Budget(max_ppl_ratio=1.1).for_task("stsb")
    with pytest.raises(ConfigError, match="for perplexity give --max-ppl-ratio"):
        Budget(max_drop=1.0).for_task("lm")
    with pytest.raises(ConfigError, match="search budget"):
        Budget(time=None, trials=None)
    assert Budget().for_task("lm").max_ppl_ratio == 1.10 and Budget().for_task("stsb").max_drop == 1.0
    b = Budget(max_drop=1.0)
    assert b.loss("stsb", 80.0, 79.5) == pytest.approx(-0.5) and b.loss("stsb", 80.0, 78.0) == pytest.approx(1.0)
    p = Budget(max_ppl_ratio=1.1)
    assert p.loss("lm", 20.0, 21.0) < 0 < p.loss("lm", 20.0, 23.0)
    r = Budget(min_recovery=0.99)
    assert r.loss("lm", 20.0, 20.1) < 0 < r.loss("lm", 20.0, 21.0) and r.loss("stsb", 80, 79.5) < 0


def test_split_is_seeded_disjoint_and_complete():
    task = _task(100)
    s, c = split_task(task, 0.3, seed=0)
    assert len(s) == 70 and len(c) == 30
    assert sorted(s.examples + c.examples) == sorted(task.examples)
    assert split_task(task, 0.3, seed=0)[1].examples == c.examples != split_task(task, 0.3, seed=1)[1].examples
    with pytest.raises(ConfigError, match="too few to split"):
        split_task(_task(30), 0.5, seed=0)
    lm = sf.Task("lm", ["\n".join(f"line {i}" for i in range(10))], "x")
    a, b = split_task(lm, 0.5, 0)
    assert a.examples[0].split("\n")[-1] == "line 4" and b.examples[0].split("\n")[0] == "line 5"


def test_plan_runs_trials_keeps_the_best_and_its_recipe_rebuilds_it(tmp_path):
    sm = tiny_slim("bert", "embedding")
    out = tmp_path / "plan"
    res = sf.plan(sm, _task(), out, Budget(max_drop=5.0, time=240, trials=4, batch_size=4, seq_len=16),
                  sf.sample_sentences(), sf.PlanOptions(peers=False, progress=False))
    data = json.loads((out / "plan.json").read_text())
    assert len(data["trials"]) == 4 == len(res.trials) and all(t["state"] == "COMPLETE" for t in data["trials"])
    assert {t["label"] for t in data["trials"]} >= {"onnx-int8", "onnx-int8-static"}  # no training first
    for t in data["trials"]:
        assert t["throughput_x"] > 0 and 0 < t["bytes_x"] and "search_spearman" in t and "confirm_spearman" in t
    assert set(res.front) <= {t["trial"] for t in data["trials"]} and res.front
    ok = [t for t in data["trials"] if t["feasible"] and t["confirmed"]]
    assert res.best is not None and res.best["trial"] == max(ok, key=lambda t: t["value"])["trial"]
    best = json.loads((out / "best" / "plan_best.json").read_text())
    assert best["trial"] == res.best["trial"] and best["inside"]
    # the recipe in best/ rebuilds the same model from the original
    from slimformer.plan.trial import read_task

    import yaml

    steps = yaml.safe_load((out / "best" / "recipe.yaml").read_text())["steps"]
    assert all(isinstance(st["optimize"], bool) for st in steps if st["method"] == "onnx")  # the choice made, pinned
    search = read_task(out / ".plan" / "search.json")  # re-run on the same data
    rebuilt = sf.compress(tiny_slim("bert", "embedding"), str(out / "best" / "recipe.yaml"), search,
                          tmp_path / "again", sf.CompressOptions(evaluation=False, unlabeled=sf.sample_sentences()))
    texts = sf.sample_sentences()[:4]
    a, b = sf.load(out / "best").embed(texts), sf.load(tmp_path / "again").embed(texts)
    assert rebuilt.steps and torch.allclose(a, b, atol=1e-5)
    page = (out / "report.html").read_text()
    assert 'id="slimformer-data"' in page and "quality budget" in page
    _check_in_browser(out / "report.html", res, tmp_path)


def _check_in_browser(page: Path, res, tmp_path: Path) -> None:
    """The plan's report in headless Chromium: every finished trial and peer drawn, no console error."""
    import importlib.util
    import shutil

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None or importlib.util.find_spec("playwright") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser check: install chromium and playwright")
        return
    probe = Path(__file__).resolve().parents[1] / "report" / "browser_probe.py"
    r = subprocess.run([sys.executable, str(probe), exe, str(page), str(tmp_path / "plan.png")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["errors"] == []
    chart = next(c for c in seen["charts"] if c["name"] == "trials")
    done = [t for t in res.trials if t["state"] == "COMPLETE"]
    peers = [t for t in done if t.get("peer")] + [p for p in res.peers if "error" not in p]
    assert chart["drawn_all"] == chart["declared"] == len(done) + len(peers)


def test_two_workers_share_one_study(tmp_path):
    res = sf.plan(tiny_slim("bert", "embedding"), _task(), tmp_path / "plan",
                  Budget(max_drop=5.0, time=45, batch_size=4, seq_len=16), None,
                  sf.PlanOptions(peers=False, progress=False, workers=2))
    done = [t for t in res.trials if t["state"] == "COMPLETE"]
    assert len(done) >= 4 and {t["worker"] for t in done} == {0, 1}  # both processes ran trials of the one study
    assert len({t["trial"] for t in res.trials}) == len(res.trials)
    assert not [t for t in res.trials if t["state"] == "FAIL"]  # no trial taken (and run) by both workers


def _take_trials(out: str, q) -> None:
    import optuna

    from slimformer.plan.study import STUDY_NAME, study_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(Path(out)))
    q.put([study.ask().number for _ in range(15)])


def test_workers_never_take_the_same_enqueued_trial(tmp_path):
    """Optuna on SQLite reads a WAITING trial's state unlocked before writing RUNNING: four
    processes asking at once took the same enqueued trial (54 distinct of 60 without the lock)."""
    import multiprocessing

    import optuna

    from slimformer.plan.study import STUDY_NAME, study_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path))
    for i in range(60):
        study.enqueue_trial({"x": i})
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_take_trials, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    taken = [n for _ in procs for n in q.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(taken) == list(range(60))


def test_a_second_plan_into_the_same_folder_is_refused_and_resume_needs_a_plan(tmp_path):
    with pytest.raises(sf.SlimformerError, match="no plan to resume"):
        sf.plan(out=tmp_path / "none", budget=Budget(trials=1), options=sf.PlanOptions(resume=True, progress=False))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(sf.SlimformerError, match="holds files slimformer did not write"):
        sf.plan(tiny_slim("bert", "embedding"), _task(), tmp_path / "mine", Budget(trials=1),
                options=sf.PlanOptions(progress=False))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="--workers 0"):
        sf.plan(tiny_slim("bert", "embedding"), _task(), tmp_path / "w", Budget(trials=1),
                options=sf.PlanOptions(workers=0, progress=False))


def test_kill_9_then_resume_continues_the_same_study(tmp_path):
    model = sf.save(tiny_slim("bert", "embedding"), tmp_path / "model")
    (tmp_path / "sents.txt").write_text("\n".join(sf.sample_sentences()))
    out = tmp_path / "plan"
    data = str(DATA) if DATA.exists() else _write_task(tmp_path)
    cmd = [sys.executable, "-m", "slimformer.cli", "plan", str(model), "--task", "stsb", "--data", data, "--limit", "120",
           "--unlabeled", str(tmp_path / "sents.txt"), "--max-drop", "5", "--batch-size", "4", "--seq-len", "16",
           "--no-peers", "--time", "10m", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 240:
        if (out / "study.db").exists() and any(s == "COMPLETE" for _, s in _trials(out)):
            break
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)  # the plan and its worker, as a crash or an out-of-memory kill would
    p.wait()
    before = _trials(out)
    done = [n for n, s in before if s == "COMPLETE"]
    assert done, before
    assert (out / "best" / "plan_best.json").exists()  # the best so far survived the kill
    r = subprocess.run([sys.executable, "-m", "slimformer.cli", "plan", "--resume", "--trials", str(len(done) + 2),
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming the plan" in r.stderr
    after = _trials(out)
    assert [n for n, s in after if s == "COMPLETE"][: len(done)] == done  # the same study, its trials kept
    assert len([1 for _, s in after if s in ("COMPLETE", "PRUNED", "FAIL")]) >= len(done) + 2
    assert "RUNNING" not in {s for _, s in after}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["best"] is not None and (out / "best" / "recipe.yaml").exists()


def _write_task(tmp_path: Path) -> str:
    texts = sf.sample_sentences()
    f = tmp_path / "stsb.csv"
    f.write_text("\n".join(f"{texts[i].replace(',', ' ')},{texts[i + 1].replace(',', ' ')},{i % 5}.0"
                           for i in range(120)))
    return str(f)


def test_plan_on_a_local_ray_instance_with_two_workers(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "plan"
    res = sf.plan(tiny_slim("bert", "embedding"), _task(), out, Budget(max_drop=5.0, time=300, trials=3, batch_size=4,
                                                                       seq_len=16),
                  None, sf.PlanOptions(peers=False, progress=False, ray_address="local", workers=2))
    assert len(res.trials) == 3 and all(t["state"] == "COMPLETE" for t in res.trials)
    assert all("throughput_x" in t and "confirm_spearman" in t for t in res.trials)  # figures stored by the searcher
    assert (out / "best" / "plan_best.json").exists() and res.best is not None
    import ray

    ray.shutdown()


def test_cli_plan_bad_budgets_are_one_line_errors(tmp_path):
    model = sf.save(tiny_slim("bert", "embedding"), tmp_path / "model")
    data = str(DATA) if DATA.exists() else _write_task(tmp_path)
    base = [sys.executable, "-m", "slimformer.cli", "plan", str(model), "--task", "stsb", "--data", data,
            "--out", str(tmp_path / "o")]
    for extra, said in ((["--max-drop", "-2"], "--max-drop -2.0"), (["--time", "soon"], "--time 'soon'"),
                        (["--max-ppl-ratio", "1.1"], "--max-ppl-ratio applies to language models"),
                        (["--min-recovery", "3"], "--min-recovery 3.0")):
        r = subprocess.run(base + extra, capture_output=True, text=True)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o").exists()
    r = subprocess.run(base + ["--objective", "speed"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'speed'" in r.stderr


def test_a_student_is_checked_at_its_short_rung_and_the_teacher_cache_is_shared(tmp_path):
    """The rung callback measures the student mid-training and stops it when told; a student that
    trains to the end leaves the teacher's embeddings in the plan's cache for the next trial."""
    from slimformer.plan.api import _prepare
    from slimformer.plan.space import Candidate, strided_layers
    from slimformer.plan.trial import Pruned, Worker

    out = tmp_path / "plan"
    spec = _prepare(tiny_slim("bert", "embedding"), _task(), out, Budget(max_drop=5.0, time=60), sf.sample_sentences(),
                    sf.PlanOptions(), lambda m: None)
    info = spec.info
    assert info["full_steps"] == 22 and info["rung_steps"] == 5 and info["can_train"]
    cand = Candidate("student", [{"method": "shrink_layers", "keep": strided_layers(2, 1)},
                                 {"method": "distill", "losses": ["embedding_cosine"], "max_steps": info["full_steps"]},
                                 {"method": "onnx", "quantize": "int8"}], family="student")
    w = Worker(spec)
    seen = []
    with pytest.raises(Pruned, match="stop here") as e:
        w.run(cand, tmp_path / "t0", promote=lambda f: seen.append(f) or "stop here")
    assert e.value.figures["rung"] == 5 and "rung_spearman" in e.value.figures and len(seen) == 1
    assert not list((out / ".plan" / "cache").glob("teacher-*.pt"))  # stopped before the end: nothing shared yet
    fig = w.run(cand, tmp_path / "t1", promote=lambda f: None)
    assert fig["rung"] == 5 and "confirm_spearman" in fig and fig["throughput_x"] > 0
    assert len(list((out / ".plan" / "cache").glob("teacher-*.pt"))) == 1


def test_candidates_not_run_stop_the_study_after_a_limit():
    """A sampler that only proposes what cannot run (repeats, or training with no time left) stops
    the study after MAX_REPEATS of them instead of spinning until the deadline."""
    import optuna

    from slimformer.plan.study import MAX_REPEATS, _idle

    study = optuna.create_study()
    repeats = [0]
    study.optimize(lambda t: _idle(t, repeats, "no time left"), n_trials=10 * MAX_REPEATS)
    assert len(study.trials) == MAX_REPEATS + 1
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["idle"] for t in study.trials)


def test_resume_queues_again_the_first_candidates_that_never_ran(tmp_path):
    """A plan whose first candidates were skipped (no time left, or killed before them) tries them
    first when resumed, once each."""
    import optuna

    from slimformer.plan.api import _resume
    from slimformer.plan.space import SpaceInfo, first_candidates
    from slimformer.plan.trial import PlanSpec

    (tmp_path / "sents.txt").write_text("\n".join(sf.sample_sentences()))
    out = tmp_path / "plan"
    sf.plan(tiny_slim("bert", "embedding"), _task(60), out, Budget(max_drop=5.0, trials=1, batch_size=4, seq_len=16),
            str(tmp_path / "sents.txt"), sf.PlanOptions(progress=False, peers=False))
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")
    while study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
        t = study.ask()  # the next queued candidate, as a worker takes it ...
        study.tell(t, state=optuna.trial.TrialState.PRUNED)  # ... and skips it (no time left)
    spec = PlanSpec.read(out / ".plan" / "spec.json")
    first = first_candidates(SpaceInfo(**spec.info), spec.budget["objective"])
    complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    for _ in range(2):  # a second resume queues nothing twice
        _resume(out, None, lambda m: None)
        waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
        assert len(waiting) == len(first) - complete > 0
        assert {tuple(sorted(t.system_attrs["fixed_params"].items())) for t in waiting} <= {
            tuple(sorted(p.items())) for p in first}
