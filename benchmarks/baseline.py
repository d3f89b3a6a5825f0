"""Baselines later issues compare against: MiniLM on STS-B dev, SmolLM2-135M on WikiText-2.

    python benchmarks/baseline.py            # both models; ~10 min on 2 cores
    python benchmarks/baseline.py --only minilm
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions, TimingOptions  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--only", choices=["minilm", "smollm2"])
    ap.add_argument("--ppl-max-tokens", type=int, default=16384)
    a = ap.parse_args()
    rows, payload = [], {"threads": a.threads}
    if a.only in (None, "minilm"):
        m = sf.load()
        task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
        r = sf.evaluate(m, task, None, EvalOptions(threads=a.threads))
        payload["minilm_stsb"] = r.to_dict()
        e = r.efficiency
        rows.append(["all-MiniLM-L6-v2", "STS-B dev (1500)", f"spearman {r.metrics['spearman']:.2f}", e["params"],
                     e["bytes"] / 1e6, e["latency_ms_p50"], e["throughput"], e["peak_memory_mb"]])
    if a.only in (None, "smollm2"):
        m = sf.load(smollm2_gguf())
        task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
        opts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                           timing=TimingOptions(seq_len=128, batch_size=8, repeats=10, throughput_repeats=3),
                           threads=a.threads)
        r = sf.evaluate(m, task, None, opts)
        payload["smollm2_wikitext2"] = r.to_dict()
        e, s = r.efficiency, r.env["task_settings"]
        rows.append(["SmolLM2-135M (Q4_1 GGUF, dequantized fp32)",
                     f"WikiText-2 raw test, first {s['ppl_tokens']} tokens, window {s['ppl_window']} stride {s['ppl_stride']}",
                     f"perplexity {r.metrics['perplexity']:.2f}", e["params"], e["bytes"] / 1e6, e["latency_ms_p50"],
                     e["throughput"], e["peak_memory_mb"]])
    md = "\n".join([
        "# Baselines", "",
        f"`python benchmarks/baseline.py` ({a.threads} threads; latency batch 1 x 128 tokens; throughput "
        "items/s at batch 32 x 128 for MiniLM, 8 x 128 for SmolLM2; median after warm-up). "
        "Absolute times depend on the machine and its load; compare ratios within one run.", "",
        table(["model", "data", "quality", "params", "MB on disk", "latency p50 ms", "throughput /s", "peak MB"], rows),
    ])
    write("baseline", payload, md, a.out)


if __name__ == "__main__":
    main()
