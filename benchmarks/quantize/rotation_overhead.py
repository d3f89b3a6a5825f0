"""What the run-time part of the Hadamard rotation costs: SmolLM2-135M int4 g128 with and without
`rotate` (round-to-nearest: the modules are the same as GPTQ's, and quantizing takes seconds),
and the float model for scale: prefill latency (batch 1) and greedy decode speed with the KV
cache, in one run.

    python benchmarks/quantize/rotation_overhead.py
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402


@torch.inference_mode()
def _prefill_ms(model, ids, reps: int) -> float:
    model(ids, use_cache=False)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(ids, use_cache=False)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


@torch.inference_mode()
def _decode_tok_s(model, ids, new: int, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        ts.append(time.perf_counter() - t0)
    return new / statistics.median(ts)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load(smollm2_gguf())
    text = (a.data / "wikitext2raw" / "wiki.test.raw").read_text()[:20000]
    ids = base.tokenizer(text, return_tensors="pt")["input_ids"][:, : a.prefill_tokens]
    prompt = ids[:, :16]
    rows, payload = [], {"prefill_tokens": ids.shape[1], "new_tokens": a.new_tokens, "threads": a.threads,
                         "reps": a.reps, "models": {}}
    models = {"float32 (dequantized GGUF)": base.model.eval()}
    for name, cfg in {"int4 RTN g128": sf.WeightOnlyConfig(bits=4, group_size=128),
                      "int4 RTN g128 + rotation": sf.WeightOnlyConfig(bits=4, group_size=128, rotate=True)}.items():
        m = copy.deepcopy(base)
        sf.quantize_(m, cfg)
        models[name] = m.model.eval()
    # interleave the two models' measurements so drift hits both alike
    res = {n: {"prefill_ms": [], "decode_tok_s": []} for n in models}
    for _ in range(2):
        for n, m in models.items():
            res[n]["prefill_ms"].append(_prefill_ms(m, ids, a.reps))
            res[n]["decode_tok_s"].append(_decode_tok_s(m, prompt, a.new_tokens, max(1, a.reps // 2)))
    ref = None
    q = "int4 RTN g128"
    ref = (min(res[q]["prefill_ms"]), max(res[q]["decode_tok_s"]))
    for n in models:
        p, d = min(res[n]["prefill_ms"]), max(res[n]["decode_tok_s"])
        payload["models"][n] = {"prefill_ms": p, "decode_tok_s": d, "runs": res[n]}
        rows.append([n, p, ref[0] / p, d, d / ref[1]])
        print(f"{n}: prefill {p:.1f} ms, decode {d:.1f} tok/s", flush=True)
    md = "\n".join([
        "# Run-time cost of the Hadamard rotation (SmolLM2-135M, int4 g128)", "",
        f"`python benchmarks/quantize/rotation_overhead.py`: prefill of {ids.shape[1]} tokens (batch 1, no cache; "
        f"median of {a.reps}, best of 2 interleaved rounds) and greedy decoding of {a.new_tokens} tokens after a "
        f"16-token prompt with the KV cache; {a.threads} threads. The rotated model runs a fast Hadamard "
        "(Kronecker factors 12 x 128) on each down projection's input and a 576-wide one before and after "
        "the final norm; everything else is folded into the weights. Ratios are against unrotated int4. "
        "Both int4 models dequantize every weight inside each call (packed int4 in memory), which is why they "
        "are slower than float on CPU, above all when decoding one token at a time.", "",
        table(["model", "prefill ms", "speed vs unrotated", "decode tokens/s", "decode vs unrotated"], rows),
    ])
    write("quantize_rotation_overhead", payload, md, a.out)


if __name__ == "__main__":
    main()
