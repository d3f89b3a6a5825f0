"""Is a sparse model faster on this CPU? Dense matmul vs torch's sparse CSR kernels at 50% and
90% unstructured sparsity, on the layer shapes of SmolLM2-135M (576 -> 1536) and MiniLM
(384 -> 1536), for one token (LM decode), 256 tokens (LM prefill) and 32 x 128 tokens (encoder
batch). Ratios are dense time / sparse time measured in this run (> 1: sparse is faster).

    python benchmarks/prune/sparse_speed.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import base_parser, write  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.prune.masks import mask_layer  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def timeit(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


@torch.inference_mode()
def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    shapes = {"SmolLM2 up (576 -> 1536)": (576, 1536), "MiniLM up (384 -> 1536)": (384, 1536)}
    tokens = {"1 token": 1, "256 tokens": 256, "4096 tokens (32 x 128)": 4096}
    rows, out = [], {"cpu": cpu_info(), "threads": a.threads, "rows": []}
    for sname, (fin, fout) in shapes.items():
        w = torch.randn(fout, fin, generator=g)
        for sp in (0.5, 0.9):
            ws = w * mask_layer(w.abs(), sp)
            csr = ws.to_sparse_csr()
            for tname, n in tokens.items():
                x = torch.randn(n, fin, generator=g)
                dense = timeit(lambda: torch.nn.functional.linear(x, ws), a.reps)
                sparse = timeit(lambda: torch.sparse.mm(csr, x.t()).t(), a.reps)
                r = {"shape": sname, "sparsity": sp, "tokens": tname, "dense_ms": dense * 1e3, "csr_ms": sparse * 1e3,
                     "speedup": dense / sparse}
                out["rows"].append(r)
                rows.append([sname, f"{sp:.0%}", tname, dense * 1e3, sparse * 1e3, f"{dense / sparse:.2f}x"])
                print(rows[-1], flush=True)
    c = out["cpu"]
    md = "\n".join([
        "# Unstructured sparsity on CPU: dense vs sparse CSR matmul", "",
        f"`python benchmarks/prune/sparse_speed.py` ({a.threads} threads, torch {torch.__version__}, CPU "
        f"{c.get('cpu_model', '?')}, {c.get('cpu_capability')}). Median of {a.reps} calls. Speed-up = dense / CSR time "
        "(> 1 means the sparse kernel is faster). torch's 2:4 semi-structured kernels (`to_sparse_semi_structured`) "
        "run on CUDA only, so 2:4 is not timed here.", "",
        table(["layer", "sparsity", "input", "dense ms", "CSR ms", "speed-up"], rows),
    ])
    write("prune_sparse_speed", out, md, a.out)


if __name__ == "__main__":
    main()
