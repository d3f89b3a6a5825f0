"""The planner on SmolLM2-135M: the smallest model within +10% WikiText-2 perplexity.

    python benchmarks/plan/lm.py --time 45m

`slimformer plan` with --max-ppl-ratio 1.10 --objective bytes on the WikiText-2 raw test text
(the first half to search on, the second half to confirm on; perplexity of the first 16,384 tokens
of each, windows of 1024, stride 512); calibration texts come from the search half. The first
trials are int4 RTN, int4 GPTQ, and the rotated GPTQ of the int4-gptq-rot recipe (g128 and g64),
so the reference (int4-gptq-rot: 16.6% of the float bytes) is measured in the same run. The folder
is kept in .cache/bench/plan/NAME; writes benchmarks/results/plan_NAME.{json,md}.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.plan import parse_time  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench"


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--time", default="45m")
    ap.add_argument("--max-ppl-ratio", type=float, default=1.10)
    ap.add_argument("--name", default="smollm2-bytes")
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    from slimformer.testing.packaged import smollm2_gguf

    torch.set_num_threads(a.threads)
    folder = CACHE / "plan" / a.name
    budget = sf.Budget(max_ppl_ratio=a.max_ppl_ratio, objective="bytes", time=parse_time(a.time), batch_size=1,
                       seq_len=128)
    t0 = time.time()
    if a.resume:
        res = sf.plan(out=folder, budget=budget, options=sf.PlanOptions(resume=True))
    elif not (folder / "plan.json").exists():
        task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
        res = sf.plan(sf.load(smollm2_gguf()), task, folder, budget)
    else:
        res = sf.PlanResult(**json.loads((folder / "plan.json").read_text()))
    wall = time.time() - t0
    plan = res.to_dict()
    cpu = cpu_info()
    flags = " ".join(f for f in cpu.get("cpu_flags", []) if f.startswith(("avx", "amx")))
    base = plan["baseline"]
    lines = [f"# slimformer plan: SmolLM2-135M, WikiText-2, objective bytes, max ppl ratio {a.max_ppl_ratio}, {a.time}",
             "", f"`python benchmarks/plan/lm.py --time {a.time}` ({a.threads} threads, CPU {cpu.get('cpu_model', '?')}, "
             f"flags {flags}). Plan wall time {wall / 60:.1f} min.", "",
             f"Original perplexity {base['search_perplexity']:.2f} (search half) / {base['confirm_perplexity']:.2f} "
             f"(confirmation half), {base['bytes'] / 1e6:.1f} MB. {plan['note']}", "",
             "| trial | candidate | state | ppl search | ppl confirm | ratio (confirm) | bytes x | s |", "|---|---|---|---|---|---|---|---|"]
    for r in plan["trials"]:
        f = lambda k, d=2: "-" if r.get(k) is None else f"{r[k]:.{d}f}"  # noqa: E731
        ratio = r["confirm_perplexity"] / base["confirm_perplexity"] if r.get("confirm_perplexity") else None
        lines.append(f"| {r['trial']} | {r.get('label')} | {r['state']} | {f('search_perplexity')} | "
                     f"{f('confirm_perplexity')} | {'-' if ratio is None else f'{ratio:.3f}'} | {f('bytes_x', 4)} | "
                     f"{f('seconds', 0)} |")
    write(f"plan_{a.name}", {"plan": plan, "wall_seconds": wall, "budget": budget.to_dict()}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
