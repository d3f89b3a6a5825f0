"""SmolLM2-135M pruning on WikiText-2 raw test: sparsity (magnitude, Wanda, SparseGPT; 50% and
2:4; SparseGPT 50% + int4 joint) and structure (heads + FFN neurons, whole layers).

    python benchmarks/prune/lm.py                       # every row (about 40 minutes on 2 cores)
    python benchmarks/prune/lm.py --only "wanda 50%" --append

Perplexity settings as benchmarks/quantize/lm.py (first 8,192 tokens, window 1024, stride 512);
calibration: 64 x 512 tokens of WikiText-2 *valid*. Structured rows also time prefill (1 x 256
tokens) and greedy decode (32 new tokens) against the unpruned model, interleaved in one run.
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, smollm2_wikitext, write  # noqa: E402
from slimformer.core import step_details  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

SPARSE = {
    "magnitude 50%": [sf.MagnitudeConfig(amount=0.5)],
    "wanda 50%": [sf.WandaConfig(amount=0.5)],
    "sparsegpt 50%": [sf.SparseGPTConfig(amount=0.5)],
    "magnitude 2:4": [sf.MagnitudeConfig(pattern="2:4")],
    "wanda 2:4": [sf.WandaConfig(pattern="2:4")],
    "sparsegpt 2:4": [sf.SparseGPTConfig(pattern="2:4")],
    "sparsegpt 50% + int4 g128 (joint), int8 embedding": [
        sf.SparseGPTConfig(amount=0.5, bits=4, group_size=128),
        sf.WeightOnlyConfig(bits=8, group_size=128, targets=("re:^$",))],  # int8 embedding + tied head only
}
STRUCT = {
    "heads 10% + ffn 10% (activation)": [sf.HeadPruningConfig(amount=0.1, importance="activation"),
                                         sf.FFNPruningConfig(amount=0.1, importance="activation")],
    "heads 20% + ffn 20% (activation)": [sf.HeadPruningConfig(amount=0.2, importance="activation"),
                                         sf.FFNPruningConfig(amount=0.2, importance="activation")],
    "heads 30% + ffn 30% (activation)": [sf.HeadPruningConfig(amount=0.34, importance="activation"),
                                         sf.FFNPruningConfig(amount=0.3, importance="activation")],
    "ffn 20% (magnitude)": [sf.FFNPruningConfig(amount=0.2, importance="magnitude")],
    "ffn 20% (energy)": [sf.FFNPruningConfig(amount=0.2, importance="energy")],
    "heads 20% + ffn 20% (energy)": [sf.HeadPruningConfig(amount=0.2, importance="energy"),
                                     sf.FFNPruningConfig(amount=0.2, importance="energy")],
    "2 of 30 layers (block influence)": [sf.LayerDropConfig(count=2)],
    "4 of 30 layers (block influence)": [sf.LayerDropConfig(count=4)],
    "6 of 30 layers (block influence)": [sf.LayerDropConfig(count=6)],
}


@torch.inference_mode()
def speed(models: dict, ids, new: int, rounds: int) -> dict:
    """Interleaved: each round, every model does one prefill (1 x len(ids), no cache) and one
    greedy decode of `new` tokens. Medians."""
    pre = {k: [] for k in models}
    dec = {k: [] for k in models}
    for m in models.values():
        m.model(ids, use_cache=False)
    for _ in range(rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            m.model(ids, use_cache=False)
            pre[k].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            m.model.generate(ids[:, :32], max_new_tokens=new, min_new_tokens=new, do_sample=False)
            dec[k].append(time.perf_counter() - t0)
    return {k: {"prefill_ms": statistics.median(pre[k]) * 1e3, "decode_tok_s": new / statistics.median(dec[k])}
            for k in models}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--calib-texts", type=int, default=2000, help="lines of wikitext2/valid.txt for calibration")
    ap.add_argument("--only", nargs="*", help="subset of row names")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds for structured rows")
    ap.add_argument("--append", action="store_true", help="merge the rows run into the existing results JSON")
    a = ap.parse_args()
    rows_all = {**SPARSE, **STRUCT}
    unknown = [n for n in a.only or [] if n not in rows_all]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; accepted: {list(rows_all)}")
    torch.set_num_threads(a.threads)
    base, task, calib, opts = smollm2_wikitext(a)
    r = sf.evaluate(base, task, None, opts)
    fppl, fbytes, fparams = r.metrics["perplexity"], saved_bytes(base)["bytes"], base.num_params()
    payload = {"cpu": cpu_info(), "threads": a.threads, "settings": r.env["task_settings"],
               "calibration": f"wikitext2/valid.txt first {a.calib_texts} lines (64 x 512 tokens)",
               "dense": {"perplexity": fppl, "bytes": fbytes, "params": fparams}, "rows": {}}
    path = a.out / "prune_lm.json"
    if a.append and path.exists():
        payload["rows"] = json.loads(path.read_text()).get("rows", {})
    built = {}
    for name, steps in rows_all.items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        for cfg in steps:
            sf.prune_(m, cfg, calib) if cfg.method != "weight_only" else sf.quantize_(m, cfg, calib)
        secs = time.perf_counter() - t0
        ppl = sf.evaluate(m, task, None, opts).metrics["perplexity"]
        row = {"steps": [c.to_dict() for c in steps], "perplexity": ppl, "bytes": saved_bytes(m)["bytes"],
               "params": sum(p.numel() for p in m.model.parameters()), "seconds": secs,
               "details": {c.method: {k: v for k, v in step_details(m, c.method).items() if k != "per_layer"}
                           for c in steps}}
        payload["rows"][name] = row
        print(f"{name}: ppl {ppl:.2f} ({ppl / fppl:.2f}x dense), {row['bytes'] / 1e6:.1f} MB, {secs:.0f} s", flush=True)
        if name in STRUCT:
            built[name] = m
        else:
            del m
    if built:
        text = (a.data / "wikitext2raw" / "wiki.test.raw").read_text()[:20000]
        ids = base.tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
        sp = speed({"dense": base, **built}, ids, 32, a.rounds)
        payload["speed"] = {"prefill_tokens": 256, "new_tokens": 32, "rounds": a.rounds, "dense": sp["dense"]}
        for name in built:
            payload["rows"][name]["speed"] = sp[name]
            payload["rows"][name]["prefill_x"] = sp["dense"]["prefill_ms"] / sp[name]["prefill_ms"]
            payload["rows"][name]["decode_x"] = sp[name]["decode_tok_s"] / sp["dense"]["decode_tok_s"]
    rows = [["dense (dequantized GGUF)", fppl, 1.0, fbytes / 1e6, 1.0, fparams / 1e6, "", "", ""]]
    for name in [n for n in rows_all if n in payload["rows"]]:
        v = payload["rows"][name]
        rows.append([name, v["perplexity"], v["perplexity"] / fppl, v["bytes"] / 1e6, v["bytes"] / fbytes,
                     v["params"] / 1e6, f"{v['prefill_x']:.2f}x" if "prefill_x" in v else "",
                     f"{v['decode_x']:.2f}x" if "decode_x" in v else "", f"{v['seconds']:.0f}"])
    s = r.env["task_settings"]
    md = "\n".join([
        "# Pruning SmolLM2-135M", "",
        f"`python benchmarks/prune/lm.py`: WikiText-2 raw test, first {s['ppl_tokens']} tokens, window "
        f"{s['ppl_window']}, stride {s['ppl_stride']}; {a.threads} threads; CPU {payload['cpu'].get('cpu_model', '?')} "
        f"({payload['cpu'].get('cpu_capability')}). Calibration: WikiText-2 valid. Sparse rows store a bitmask + kept "
        "values (bytes = the saved file); they run at dense speed. Structured rows are physically smaller; prefill "
        "(1 x 256) and decode (32 tokens) speed are ratios to the dense model in the same run (interleaved, medians). "
        "No recovery training. Rows may come from separate `--append` runs.", "",
        table(["row", "perplexity", "ppl / dense", "MB", "bytes / dense", "params M", "prefill x", "decode x",
               "prune s"], rows),
    ])
    write("prune_lm", payload, md, a.out)


if __name__ == "__main__":
    main()
