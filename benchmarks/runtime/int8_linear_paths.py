"""Where our PyTorch int8 linear loses to torch `quantize_dynamic`: one MiniLM-shaped linear at a
time (4096 tokens = batch 32 x 128), minimum over repeats, 1 thread.

    python benchmarks/runtime/int8_linear_paths.py       # writes int8_linear_paths.{json,md}

Columns (ms): float nn.Linear; our Int8Linear (per-token int8 activations, `torch._int_mm`, 512
tokens at a time);
torch `quantize_dynamic` (fbgemm, prepacked weights, per-tensor 7-bit activations); its pieces:
our per-token quantization alone, `torch._int_mm` alone, oneDNN's prepacked `qlinear_pointwise`
fed the same per-token codes shifted to uint8 (exact, the GEMM alone); and our forward as it was
before it went in row chunks of 512 (the whole batch at once).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common import base_parser, write  # noqa: E402
from slimformer.core.qmath import quantize_per_token  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.quantize.modules import Int8Linear  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

SHAPES = ((384, 384), (384, 1536), (1536, 384))
TOKENS = 4096


def best_ms(f, n: int = 30) -> float:
    f(), f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


def whole(q: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """Our forward before it went in chunks: the whole batch at once."""
    qx, sx = quantize_per_token(x)
    return torch._int_mm(qx, q.weight_int8.t()).float().mul_(sx).mul_(q.weight_scale).add_(q.bias)


def main() -> None:
    a = base_parser(__doc__).parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    rows, payload = [], {"cpu": cpu_info(), "threads": a.threads, "tokens": TOKENS, "shapes": {}}
    with torch.inference_mode():
        for i, o in SHAPES:
            lin = nn.Linear(i, o)
            x = torch.randn(TOKENS, i)
            q = Int8Linear.from_float(lin)
            dq = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]
            qx, sx = quantize_per_token(x)
            u8 = (qx.to(torch.int16) + 128).to(torch.uint8)
            packed = torch.ops.onednn.qlinear_prepack(q.weight_int8, [TOKENS, i])
            zeros = torch.zeros(o, dtype=torch.long)

            def qlinear():
                return torch.ops.onednn.qlinear_pointwise(u8, 1.0, 128, packed, q.weight_scale, zeros, None, 1.0, 0,
                                                          torch.float32, "none", [], "")

            exact = (qlinear().mul_(sx).add_(q.bias) - q(x)).abs().max().item()
            r = {"float": best_ms(lambda: lin(x)), "ours": best_ms(lambda: q(x)),
                 "quantize_dynamic": best_ms(lambda: dq(x)), "quantize_per_token": best_ms(lambda: quantize_per_token(x)),
                 "int_mm": best_ms(lambda: torch._int_mm(qx, q.weight_int8.t())),
                 "onednn_qlinear": best_ms(qlinear), "ours_whole_batch": best_ms(lambda: whole(q, x)),
                 "qlinear_max_abs_diff": exact}
            payload["shapes"][f"{i}x{o}"] = r
            rows.append([f"{i} -> {o}", *(r[k] for k in ("float", "ours", "quantize_dynamic", "quantize_per_token",
                                                         "int_mm", "onednn_qlinear", "ours_whole_batch"))])
            print(f"{i}x{o}", r, flush=True)
    c = payload["cpu"]
    md = "\n".join([
        "# int8 linear paths in PyTorch: where the time goes", "",
        f"`python benchmarks/runtime/int8_linear_paths.py --threads {a.threads}` on {c.get('cpu_model', '?')}, torch "
        f"capability {c.get('cpu_capability')}, flags {' '.join(c.get('cpu_flags', []))}. One linear, {TOKENS} "
        "tokens, milliseconds (minimum of 30).", "",
        table(["shape", "float", "ours (_int_mm, 512-row chunks)", "quantize_dynamic", "our quantize",
               "_int_mm alone", "oneDNN qlinear alone", "ours, whole batch (before)"], rows),
    ])
    write("int8_linear_paths", payload, md, a.out)


if __name__ == "__main__":
    main()
