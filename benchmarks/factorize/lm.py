"""Low-rank factorization of SmolLM2-135M: WikiText-2 test perplexity and decode speed per method and
ratio (the fraction of the decoder layers' linear parameters kept), one-shot.

    python benchmarks/factorize/lm.py                                  # every row (about an hour on 2 cores)
    python benchmarks/factorize/lm.py --ratios 0.8 --append            # the 20% rows, merged into the results
    python benchmarks/factorize/lm.py --methods svd_llm --ratios 0.9 0.7 0.6 --append

Calibration uses WikiText-2 *valid* (64 sequences of 256 tokens), never the test text. Decode speed:
greedy tokens/s of the factorized model over the float one, timed interleaved in this process
(32 new tokens after a 64-token prompt, batch 1, median of --rounds)."""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, greedy_decode, interleaved, smollm2_wikitext, write  # noqa: E402
from slimformer.core import step_details  # noqa: E402
from slimformer.core.config import apply_method  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

GPTQ = dict(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, refit=True, calibration_samples=64)
METHODS = {  # row -> the configs it applies, for a ratio
    "svd": lambda r: [sf.SvdConfig(ratio=r)],
    "fwsvd": lambda r: [sf.FwsvdConfig(ratio=r)],
    "asvd": lambda r: [sf.AsvdConfig(ratio=r)],
    "svd_llm (one pass)": lambda r: [sf.SvdLlmConfig(ratio=r, sequential=False)],
    "svd_llm spectrum (one pass)": lambda r: [sf.SvdLlmConfig(ratio=r, allocation="spectrum", sequential=False)],
    "svd_llm layer by layer": lambda r: [sf.SvdLlmConfig(ratio=r, sequential=True)],
    "basis_sharing": lambda r: [sf.BasisSharingConfig(ratio=r)],
    # composition: the factors quantized (GPTQ int4 g128 as w4-gptq; int8 RTN per group of 128)
    "svd_llm + int4 GPTQ g128": lambda r: [sf.SvdLlmConfig(ratio=r), sf.WeightOnlyConfig(**GPTQ)],
    "svd_llm (ranks x16) + int4 GPTQ g128": lambda r: [sf.SvdLlmConfig(ratio=r, rank_multiple=16),
                                                       sf.WeightOnlyConfig(**GPTQ)],
    "svd_llm + int8 g128": lambda r: [sf.SvdLlmConfig(ratio=r), sf.WeightOnlyConfig(bits=8, group_size=128,
                                                                                   algorithm="rtn")],
}
DEFAULT = ["svd", "fwsvd", "asvd", "svd_llm (one pass)", "svd_llm spectrum (one pass)", "svd_llm layer by layer",
           "basis_sharing"]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--calib-texts", type=int, default=2000, help="lines of wikitext2/valid.txt for calibration")
    ap.add_argument("--methods", nargs="*", default=DEFAULT, help=f"rows of {list(METHODS)} (default: the one-shot "
                    "factorizations)")
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.9, 0.8, 0.7, 0.6])
    ap.add_argument("--rounds", type=int, default=3, help="decode timing rounds (0: no timing)")
    ap.add_argument("--name", default="factorize_lm")
    ap.add_argument("--append", action="store_true", help="merge the rows run into the existing results JSON")
    a = ap.parse_args()
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; accepted: {list(METHODS)}")
    torch.set_num_threads(a.threads)
    base, task, calib, opts = smollm2_wikitext(a)
    r = sf.evaluate(base, task, None, opts)
    fppl, fbytes = r.metrics["perplexity"], saved_bytes(base)["bytes"]
    payload = {"settings": r.env["task_settings"], "calibration": f"wikitext2/valid.txt first {a.calib_texts} lines",
               "float": {"perplexity": fppl, "bytes": fbytes}, "rows": {}}
    path = a.out / f"{a.name}.json"
    if a.append and path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != payload["settings"] or abs(old["float"]["perplexity"] - fppl) > 1e-6 * fppl:
            raise SystemExit(f"--append: {path} was measured with other settings; run without --append")
        payload["rows"] = old["rows"]
    ids = base.tokenizer(" ".join(calib[:40]), return_tensors="pt")["input_ids"][:, :64]
    for ratio in a.ratios:
        for method in a.methods:
            cfgs = METHODS[method](ratio)
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            for cfg in cfgs:
                apply_method(m, cfg, calib)
            secs = time.perf_counter() - t0
            ppl = sf.evaluate(m, task, None, opts).metrics["perplexity"]
            d = step_details(m, cfgs[0].method)
            row = {"method": method, "ratio": ratio, "steps": [c.to_dict() for c in cfgs], "perplexity": ppl,
                   "kept": d.get("kept"), "params": m.num_params(), "bytes": saved_bytes(m)["bytes"], "seconds": secs}
            if a.rounds:
                t = interleaved({"float": greedy_decode(base, ids), "factorized": greedy_decode(m, ids)}, a.rounds)
                row["decode_speedup"] = t["float"] / t["factorized"]
            payload["rows"][f"{method} @ {ratio:g}"] = row
            print(f"{method} @ {ratio}: ppl {ppl:.2f} ({ppl / fppl:.2f}x), kept {row['kept']}, "
                  f"decode {row.get('decode_speedup', 0):.2f}x, {secs:.0f} s", flush=True)
            write(a.name, payload, _markdown(a, payload, r.env["task_settings"]), a.out)
            del m


def _markdown(a, payload, s) -> str:
    fppl, fbytes = payload["float"]["perplexity"], payload["float"]["bytes"]
    rows = [["float32 (dequantized GGUF)", "-", 1.0, fppl, 1.0, fbytes / 1e6, 1.0, 0.0]]
    order = sorted(payload["rows"].values(), key=lambda r: (-r["ratio"], list(METHODS).index(r["method"])
                                                             if r["method"] in METHODS else 99))
    for row in order:
        rows.append([row["method"], f"{1 - row['ratio']:.0%}", row["kept"], row["perplexity"],
                     row["perplexity"] / fppl, row["bytes"] / 1e6, row.get("decode_speedup", float("nan")),
                     row["seconds"]])
    return "\n".join([
        "# Low-rank factorization of SmolLM2-135M (one-shot)", "",
        f"`python benchmarks/factorize/lm.py`: WikiText-2 raw test, first {s['ppl_tokens']} tokens, window "
        f"{s['ppl_window']}, stride {s['ppl_stride']}; {a.threads} threads. Removed = the share of the decoder "
        "layers' linear parameters (q/k/v/o, gate/up/down) removed; kept = what the factorization kept of them. "
        "Calibration: WikiText-2 valid, 64 x 256 tokens. decode x = greedy tokens/s over the float model's, timed "
        "interleaved in the same process (batch 1, 32 tokens after 64). Rows may come from separate `--append` runs "
        "on the same settings. Composition rows quantize both factors after the factorization (int4: GPTQ g128 "
        "as in w4-gptq, int8: round-to-nearest g128); the embedding is quantized to int8 per row as in "
        "benchmarks/results/quantize_lm.md.", "",
        table(["method", "removed", "kept", "perplexity", "ppl / float", "MB", "decode x", "seconds"], rows),
    ])


if __name__ == "__main__":
    main()
