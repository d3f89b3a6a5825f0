"""Attention kernel cost against input length: time and peak memory of every implementation,
with SDPA as the reference, on the MiniLM shape (12 heads x 64, bidirectional) and the SmolLM2
shape (9 query / 3 key-value heads x 64, causal), batch 1, float32.

    python benchmarks/attention/kernels.py                  # 512 .. 32k tokens (~25 min on 2 cores)
    python benchmarks/attention/kernels.py --lengths 512,2048 --quick

Each (shape, implementation, length) runs in its own process, so its peak memory (the process's
maximum resident set minus what it held before the call) is its own; time is the median of
repeats after a warm-up. Eager attention materialises T x T scores and is run up to 8k only.
Speed ratios are to SDPA at the same length, measured in this run on this machine. (Errors
against eager are measured on real activations in lm.py and minilm.py: random inputs give
near-uniform attention and say little.)
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import base_parser, write  # noqa: E402

SHAPES = {"minilm": (12, 12, False), "smollm2": (9, 3, True)}
IMPLS = {
    "sdpa": {}, "eager": {}, "sliding_window w256": {"window": 256},
    "sliding_window w256 + [0] global": {"window": 256, "global_tokens": (0,)},
    "block_sparse b64 r2": {"block": 64, "random_blocks": 2}, "lsh 2x64-token buckets": "lsh",
    "linear elu": {"feature_map": "elu"}, "linear performer 256": {"feature_map": "performer", "features": 256},
    "nystrom 64": {"landmarks": 64}, "pooled stride 4": {"stride": 4},
}


def impl_name(label: str) -> str:
    return label.split(" ")[0]


def options(label: str, t: int) -> dict:
    o = IMPLS[label]
    if o == "lsh":                                  # buckets of ~64 tokens, 2 rounds
        return {"buckets": max(2, 2 * (t // 128)), "rounds": 2}
    return dict(o)


def child(shape: str, label: str, t: int, repeats: int) -> None:
    """Run in a fresh process: print {"seconds", "peak_mb"} as JSON."""
    import torch

    from slimformer.attention import ATTENTION

    torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2)
    h, hk, causal = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, t, 64, generator=g) for n in (h, hk, hk))
    fn = ATTENTION.get(impl_name(label)).fn
    opts = options(label, t)
    with torch.inference_mode():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn(q, k, v, None, causal, None, **opts)                                   # warm-up, and the peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(q, k, v, None, causal, None, **opts)
            times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"seconds": times[len(times) // 2], "peak_mb": max(0, peak - before) / 1024}))


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[i + 2], int(sys.argv[i + 3]), int(sys.argv[i + 4]))
        return
    ap = base_parser(__doc__)
    ap.add_argument("--lengths", default="512,2048,8192,16384,32768")
    ap.add_argument("--quick", action="store_true", help="one timed repeat")
    ap.add_argument("--child", nargs=4)
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    from slimformer.evaluate.result import cpu_info

    rows = {}
    for shape, (h, hk, causal) in SHAPES.items():
        for t in lengths:
            for label in IMPLS:
                if label == "eager" and t > 8192:
                    continue
                if causal and impl_name(label) in ("nystrom", "pooled"):
                    continue                                # bidirectional only
                repeats = 1 if a.quick or t >= 16384 else 3
                cmd = [sys.executable, __file__, "--child", shape, label, str(t), str(repeats), "--threads",
                       str(a.threads)]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if r.returncode:
                    res = {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:200]}
                else:
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                rows.setdefault(shape, {}).setdefault(label, {})[t] = res
                print(shape, label, t, res, flush=True)
    payload = {"cpu": cpu_info(), "threads": a.threads, "lengths": lengths, "results": rows}
    md = [f"# Attention kernels: time and memory against length", "",
          f"`python benchmarks/attention/kernels.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
          f"{payload['cpu'].get('cpu_model', '?')}, torch capability {payload['cpu'].get('cpu_capability', '?')}). "
          "Batch 1, float32; speed = SDPA time / its time at the same length (> 1: faster); memory = peak extra "
          "resident memory of the call.", ""]
    for shape in rows:
        h, hk, causal = SHAPES[shape]
        md += [f"## {shape}: {h} query / {hk} key-value heads x 64, {'causal' if causal else 'bidirectional'}", "",
               "| implementation | " + " | ".join(f"{t} speed | {t} ms | {t} MB" for t in lengths) + " |",
               "|---|" + "---:|" * (3 * len(lengths))]
        for label, per in rows[shape].items():
            cells = []
            for t in lengths:
                r = per.get(t)
                base = rows[shape]["sdpa"].get(t, {})
                if not r or "error" in r or "seconds" not in base:
                    cells += ["-", "-", "-" if not r else ("err" if "error" in r else "-")]
                    continue
                cells += [f"{base['seconds'] / r['seconds']:.2f}x", f"{r['seconds'] * 1e3:.1f}", f"{r['peak_mb']:.0f}"]
            md.append(f"| {label} | " + " | ".join(cells) + " |")
        md.append("")
    md += ["Error against eager on real activations: `attention_smollm2.md` (SmolLM2 queries/keys/values at 2k "
           "tokens of WikiText-2) and `attention_minilm.md`.", ""]
    write("attention_kernels", payload, "\n".join(md), a.out)
    plot(rows, lengths, a.out)


def plot(rows: dict, lengths: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(rows), figsize=(6 * len(rows), 8))
    for j, (shape, per) in enumerate(rows.items()):
        for label, res in per.items():
            ts = [t for t in lengths if t in res and "seconds" in res[t]]
            axes[0][j].plot(ts, [res[t]["seconds"] * 1e3 for t in ts], marker="o", label=label)
            axes[1][j].plot(ts, [max(res[t]["peak_mb"], 0.1) for t in ts], marker="o", label=label)
        for i, what in enumerate(("time (ms)", "peak extra memory (MB)")):
            ax = axes[i][j]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel(what)
            ax.set_title(f"{shape}: {what}")
            ax.grid(True, alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "attention_kernels.png", dpi=110)
    print(f"wrote {out / 'attention_kernels.png'}")


if __name__ == "__main__":
    main()
