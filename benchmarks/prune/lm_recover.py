"""SmolLM2-135M structured pruning, then a short recovery by distillation from the unpruned model.

    python benchmarks/prune/lm_recover.py                          # both rows, 120 steps each
    python benchmarks/prune/lm_recover.py --only "4 of 30 layers (block influence)" --steps 200

Pruning as in benchmarks/prune/lm.py (calibration: WikiText-2 *valid*). Recovery: the pruned model
is the student, the unpruned model the teacher; token-level soft targets (KL at T=1) on WikiText-2
*valid* paragraphs (batch 8 x up to 128 tokens, lr 1e-4, warm-up 10%, linear decay). Perplexity on
WikiText-2 raw *test* (first 8,192 tokens, window 1024, stride 512) before and after; the test
text is never trained on.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402

PLANS = {
    "heads 20% + ffn 20% (energy)": [sf.HeadPruningConfig(amount=0.2, importance="energy"),
                                     sf.FFNPruningConfig(amount=0.2, importance="energy")],
    "4 of 30 layers (block influence)": [sf.LayerDropConfig(count=4)],
}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--only", nargs="*", choices=list(PLANS))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load(smollm2_gguf())
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    lines = [t.strip() for t in (a.data / "wikitext2" / "valid.txt").read_text().splitlines() if t.strip()]
    calib = lines[:2000]
    train = [t for t in lines if len(t) >= 200]  # paragraphs, not headings
    opts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                       efficiency=False, threads=a.threads)
    dense = sf.evaluate(base, task, None, opts).metrics["perplexity"]
    payload = {"cpu": cpu_info(), "threads": a.threads, "dense_perplexity": dense, "steps": a.steps,
               "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr,
               "training_paragraphs": len(train), "rows": {}}
    path = a.out / "prune_lm_recover.json"
    if path.exists():
        payload["rows"] = json.loads(path.read_text()).get("rows", {})
    for name, steps in PLANS.items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(base)
        for cfg in steps:
            sf.prune_(m, cfg, calib)
        before = sf.evaluate(m, task, None, opts).metrics["perplexity"]
        t0 = time.perf_counter()
        res = sf.distill(m, base, train, sf.DistillConfig(losses=("soft",), temperature=1.0, max_steps=a.steps,
                                                          batch_size=a.batch_size, max_length=a.max_length, lr=a.lr),
                         out_dir=Path(tempfile.mkdtemp(prefix="lm-recover-")))
        secs = time.perf_counter() - t0
        after = sf.evaluate(m, task, None, opts).metrics["perplexity"]
        payload["rows"][name] = {"perplexity_pruned": before, "perplexity_recovered": after, "seconds": secs,
                                 "tokens_seen": a.steps * a.batch_size * a.max_length, "precision": res.precision,
                                 "params": sum(p.numel() for p in m.model.parameters())}
        print(f"{name}: {before:.2f} -> {after:.2f} ({secs:.0f} s)", flush=True)
        del m
    rows = [["dense", dense, 1.0, "", "", ""]]
    for name, v in payload["rows"].items():
        rows.append([name, v["perplexity_recovered"], v["perplexity_recovered"] / dense, v["perplexity_pruned"],
                     v["params"] / 1e6, f"{v['seconds'] / 60:.1f} min"])
    md = "\n".join([
        "# SmolLM2-135M: structured pruning, then a short recovery by distillation", "",
        f"`python benchmarks/prune/lm_recover.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}). Recovery: soft targets of the unpruned model (KL, T=1) on "
        f"WikiText-2 valid paragraphs, {a.steps} steps of {a.batch_size} x <= {a.max_length} tokens (at most "
        f"{a.steps * a.batch_size * a.max_length:,} tokens), lr {a.lr:g}. Perplexity: WikiText-2 raw test, first "
        f"{a.ppl_max_tokens} tokens, window 1024, stride 512 (speed ratios of these shapes: prune_lm.md).", "",
        table(["row", "perplexity recovered", "ppl / dense", "perplexity pruned", "params M", "recovery time"], rows),
    ])
    write("prune_lm_recover", payload, md, a.out)


if __name__ == "__main__":
    main()
