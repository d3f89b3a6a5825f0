"""How time and memory grow with the model: random Llama checkpoints of real shapes (make_models.py),
compressed streamed one layer at a time, each run in its own process; wall time and peak resident
memory (the kernel's ru_maxrss of that process) per size.

    python benchmarks/scale/make_models.py                       # once: 0.36b 1b 3b 8b 8b-2l (bf16, ~27 GB)
    python benchmarks/scale/growth.py                            # w4 on every size, GPTQ/SparseGPT on 1b, 8b-2l
    python benchmarks/scale/growth.py --runs w4:1b,w4:8b --whole 1b

--runs METHOD:SIZE,...: METHOD w4 (round-to-nearest, group 128), w4-gptq (GPTQ as the int4-gptq recipe)
or sparsegpt (50%), calibrated on --samples x --tokens of WikiText-2 (default 4 x 2048: GPTQ's passes
over 128 x 2048 tokens take hours per billion parameters on 2 cores). --whole SIZE also runs the
whole-model path (the model loaded whole in float32) for the before/after row. Writes
benchmarks/results/scale_growth.{json,md,png}.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import SCALE_CACHE as CACHE, SHAPES, base_parser, llama_params as params, write  # noqa: E402

DEFAULT_RUNS = ("w4:0.36b,w4:1b,w4:3b,w4:8b,w4-gptq:0.36b,w4-gptq:1b,w4-gptq:8b-2l,sparsegpt:1b,"
                "sparsegpt:8b-2l")


def steps_for(method: str, samples: int, tokens: int) -> list:
    import slimformer as sf
    from slimformer.quantize import quantize_steps

    if method == "w4":
        return quantize_steps("w4")
    if method == "w4-gptq":
        return [dataclasses.replace(quantize_steps("w4-gptq")[0], calibration_samples=samples,
                                    calibration_tokens=tokens)]
    if method == "sparsegpt":
        return [sf.SparseGPTConfig(amount=0.5, calibration_samples=samples, calibration_tokens=tokens)]
    raise SystemExit(f"unknown method {method!r}: w4, w4-gptq, sparsegpt")


def child(a) -> None:
    """One run in this process: print a JSON line with what it measured."""
    import torch

    import slimformer as sf
    from slimformer.models.streaming import estimate_bytes, parse_size

    torch.set_num_threads(a.threads)
    folder = CACHE / f"llama-{a.size}"
    out = CACHE / "out" / f"{a.method}-{a.size}-{'whole' if a.whole_path else 'stream'}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    sm = sf.load(str(folder), stream=not a.whole_path)
    steps = steps_for(a.method, a.samples, a.tokens)
    calib = a.method != "w4"
    est = None
    if sm.stream is not None:
        est = estimate_bytes(sm, a.samples if calib else 0, a.tokens if calib else 0)
        if a.max_memory and calib and est["total"] > parse_size(a.max_memory):  # what the run's memory plan picks
            est = estimate_bytes(sm, a.samples, a.tokens, activation_bytes=2)
    res = sf.compress(sm, {"name": a.method, "steps": [s.to_dict() for s in steps]}, None, out,
                      sf.CompressOptions(evaluation=False, calibration_source=str(a.data / "wikitext2" / "valid.txt"),
                                         calibration_samples=4000,
                                         max_memory=parse_size(a.max_memory) if a.max_memory else None))
    secs = time.perf_counter() - t0
    st = res.steps[0]
    act = sm.stream.activation_dtype if sm.stream is not None else None
    print("RESULT " + json.dumps({"seconds": secs, "step_seconds": st.seconds, "bytes_before": st.bytes_before,
                                  "activations": str(act or torch.float32).replace("torch.", "") if calib else "",
                                  "bytes_after": st.bytes_after, "estimate": est,
                                  "out_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors"))}), flush=True)
    shutil.rmtree(out, ignore_errors=True)


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only) so that every size reads its shards from disk: a
    small model read again from memory would look faster per parameter than a big one from disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def measure(a, method: str, size: str, whole: bool) -> dict:
    cold = drop_page_cache() if a.cold else False
    cmd = [sys.executable, __file__, "--child", "--method", method, "--size", size, "--samples", str(a.samples),
           "--tokens", str(a.tokens), "--threads", str(a.threads), "--data", str(a.data)] + (["--whole-path"] if whole else [])
    cmd += ["--max-memory", a.max_memory] if a.max_memory else []
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = "", ""
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    row = {"method": method, "size": size, "params": params(size), "path": "whole" if whole else "streamed",
           "samples": a.samples, "tokens": a.tokens, "max_memory": a.max_memory,
           "peak_rss_bytes": usage.ru_maxrss * 1024, "wall_seconds": time.time() - t0, "cold_cache": cold}
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if status != 0 or not lines:
        row["error"] = (err.strip().splitlines() or ["?"])[-1][:300]
    else:
        row.update(json.loads(lines[-1][7:]))
        row["seconds_per_billion"] = row["seconds"] / (row["params"] / 1e9)
    print(f"{method} {size} {row['path']}: {row.get('seconds', 0):.0f} s, peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB"
          + (f" ERROR {row['error']}" if "error" in row else ""), flush=True)
    return row


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--runs", default=DEFAULT_RUNS)
    ap.add_argument("--whole", default="1b", help="sizes to also run through the whole-model path (w4), ',' joined")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--name", default="scale_growth")
    ap.add_argument("--max-memory", default="", help="passed to each run (compress's --max-memory): e.g. 8G keeps "
                    "GPTQ's calibration activations in bf16 where float32 would not fit")
    ap.add_argument("--warm", dest="cold", action="store_false", help="keep the page cache between runs (default: "
                    "drop it before each run where permitted, so every size reads from disk)")
    ap.add_argument("--child", action="store_true", help=__import__("argparse").SUPPRESS)
    ap.add_argument("--method", help=__import__("argparse").SUPPRESS)
    ap.add_argument("--size", help=__import__("argparse").SUPPRESS)
    ap.add_argument("--whole-path", action="store_true", help=__import__("argparse").SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    runs = [tuple(r.split(":")) for r in a.runs.split(",") if r]
    for _, size in runs:
        if not (CACHE / f"llama-{size}" / "model.safetensors.index.json").exists():
            raise SystemExit(f"no model llama-{size}: run python benchmarks/scale/make_models.py {size}")
    rows = []
    for method, size, whole in [("w4", s, True) for s in a.whole.split(",") if s] + [(m, s, False) for m, s in runs]:
        rows.append(measure(a, method, size, whole))
        # written after every run: a long series stopped part way keeps what it measured
        write(a.name, {"rows": rows, "samples": a.samples, "tokens": a.tokens, "shapes": SHAPES}, markdown(a, rows), a.out)
    plot(rows, a.out / f"{a.name}.png")


def markdown(a, rows: list[dict]) -> str:
    from slimformer.core.hardware import cpu_info

    cpu = cpu_info()
    lines = [f"# Cost growth with model size: streamed compression ({a.threads} threads)", "",
             f"`python benchmarks/scale/growth.py` on {cpu.get('cpu_model', '?')} "
             f"({' '.join(f for f in cpu.get('cpu_flags', []) if f.startswith(('avx512_vnni', 'amx')))}). Random "
             f"Llama checkpoints of real shapes in bf16 (benchmarks/scale/make_models.py), each run in its own process; "
             f"peak RSS is the kernel's ru_maxrss; page cache dropped before each run: "
             f"{'yes' if all(r.get('cold_cache') for r in rows) else 'no (not permitted or --warm)'}. GPTQ and SparseGPT calibrate on {a.samples} x {a.tokens} tokens of "
             "WikiText-2 valid.", "",
             "| method | model | params | path | calibration | wall s | s per 1B params | peak RSS GB | estimate GB | output GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        est = (r.get("estimate") or {}).get("total")
        cal = (f"{r.get('samples', a.samples)} x {r.get('tokens', a.tokens)}, {r['activations']} activations"
               if r.get("activations") else "-")
        lines.append(f"| {r['method']} | llama-{r['size']} | {r['params'] / 1e9:.2f}B | {r['path']} | {cal} | "
                     f"{r.get('seconds', float('nan')):.0f} | {r.get('seconds_per_billion', float('nan')):.0f} | "
                     f"{r['peak_rss_bytes'] / 1e9:.2f} | {est / 1e9 if est else float('nan'):.2f} | "
                     f"{r.get('out_bytes', 0) / 1e9:.2f} |" + (f" error: {r['error']}" if "error" in r else ""))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in rows}):
        for p in ("streamed", "whole"):
            pts = sorted((r["params"], r["seconds"], r["peak_rss_bytes"]) for r in rows
                         if r["method"] == method and r["path"] == p and "seconds" in r)
            if not pts:
                continue
            x = [q[0] / 1e9 for q in pts]
            style = "o-" if p == "streamed" else "x--"
            ax1.loglog(x, [q[1] for q in pts], style, label=f"{method} ({p})")
            ax2.loglog(x, [q[2] / 1e9 for q in pts], style, label=f"{method} ({p})")
    ax1.set_xlabel("parameters (billions)")
    ax1.set_ylabel("wall seconds")
    ax2.set_xlabel("parameters (billions)")
    ax2.set_ylabel("peak RSS (GB)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
