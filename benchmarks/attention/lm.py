"""Efficient attention in SmolLM2-135M without training, on WikiText-2 raw test:

1. Each attention implementation swapped in, perplexity on 2,048-token windows (non-overlapping,
   the first --windows windows), and its error against eager on real queries/keys/values (layer
   --layer, the first window, relative L2 of the attention output).
2. Long text as one stream (the first --stream-tokens tokens; 0 = the whole test set), fed 64
   tokens at a time through a KV cache: attention sinks + window (StreamingLLM, 4 + 1,020), the
   same window without sinks, heavy hitters (H2O, 256 + 768), against full attention over a
   1,024-token window recomputed every 256 tokens (strided perplexity: each token sees 768 to
   1,024 tokens). Peak cache memory is reported with each.
3. KV-cache quantization at 2k context: int8 and int4 (KIVI: keys per channel, values per
   token, 64-token blocks, the last 64 tokens in float) against the float cache, perplexity and
   cache bytes, on --kv-windows windows of 2,048 tokens streamed 128 tokens at a time.

    python benchmarks/attention/lm.py                     # ~35 min on 2 cores
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
from slimformer.attention import ATTENTION, kv_cache, set_attention_, stream_perplexity  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import lm_token_ids  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402

VARIANTS = {
    "sdpa (full)": ("sdpa", {}),
    "sliding_window 256": ("sliding_window", {"window": 256}),
    "sliding_window 1024": ("sliding_window", {"window": 1024}),
    "sliding_window 252 + [0..3] global": ("sliding_window", {"window": 252, "global_tokens": (0, 1, 2, 3)}),
    "block_sparse b64 (3 + 1 global + 2 random)": ("block_sparse", {"block": 64}),
    "lsh 32 buckets x 2 rounds": ("lsh", {"buckets": 32, "rounds": 2}),
    "linear performer 256": ("linear", {"feature_map": "performer", "features": 256}),
    "linear elu": ("linear", {"feature_map": "elu"}),
}


def captured_qkv(sm, ids: torch.Tensor, layer: int):
    """Queries, keys and values (after rotary embedding) of attention layer `layer` on ids."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    got = {}

    def capture(module, q, k, v, mask, scaling=None, **kw):
        if getattr(module, "layer_idx", None) == layer:
            got["qkv"] = (q.clone(), k.clone(), v.clone(), scaling)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("bench_capture", capture)
    ALL_MASK_ATTENTION_FUNCTIONS.register("bench_capture", flash_attention_mask)
    prev = sm.model.config._attn_implementation
    sm.model.config._attn_implementation = "bench_capture"
    with torch.inference_mode():
        sm.model(input_ids=ids[None])
    sm.model.config._attn_implementation = prev
    return got["qkv"]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--windows", type=int, default=16, help="2,048-token windows for part 1 (default 16)")
    ap.add_argument("--stream-tokens", type=int, default=65536, help="tokens streamed in part 2 (0 = all)")
    ap.add_argument("--kv-windows", type=int, default=8)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--merge", action="store_true", help="keep the committed results of the parts not run")
    ap.add_argument("--stream-rows", default="", help="part 2: only these settings (comma-separated substrings)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    parts = {int(p) for p in a.parts.split(",")}
    committed = a.out / "attention_smollm2.json"
    old = json.loads(committed.read_text()) if a.merge and committed.exists() else {}
    sm = sf.load(smollm2_gguf())
    task = sf.load_task("lm", str(a.data / "wikitext2raw" / "wiki.test.raw"))
    ids = lm_token_ids(sm, task, TaskOptions(ppl_max_tokens=None))
    payload = {"cpu": cpu_info(), "threads": a.threads, "test_tokens": int(ids.numel())}
    # a merged run keeps the commands that made the rows it did not re-run
    payload["commands"] = old.get("commands", []) + [f"python benchmarks/attention/lm.py {' '.join(sys.argv[1:])}"]
    cpu = payload["cpu"]
    md = ["# Efficient attention in SmolLM2-135M, no training (WikiText-2 raw test)", "",
          " then ".join(f"`{c}`" for c in payload["commands"]) + f" ({a.threads} threads, CPU "
          f"{cpu.get('cpu_model', '?')}, torch capability {cpu.get('cpu_capability', '?')}). "
          f"The test set is {ids.numel():,} tokens.", ""]

    if 1 in parts:
        n = a.windows * 2048
        q, k, v, sc = captured_qkv(sm, ids[:2048], a.layer)
        ref = ATTENTION.get("eager").fn(q, k, v, None, True, sc)
        rows = {}
        for label, (name, opts) in VARIANTS.items():
            set_attention_(sm, name, **opts)
            t0 = time.perf_counter()
            r = sf.evaluate(sm, task, None, EvalOptions(task=TaskOptions(ppl_window=2048, ppl_stride=2048,
                                                                          ppl_max_tokens=n), efficiency=False))
            out = ATTENTION.get(name).fn(q, k, v, None, True, sc, **opts)
            rows[label] = {"perplexity": r.metrics["perplexity"], "seconds": time.perf_counter() - t0,
                           "attention_error": ((out - ref).norm() / ref.norm()).item()}
            print(label, rows[label], flush=True)
        set_attention_(sm, "sdpa")
        payload["windows_2k"] = {"tokens": n, "layer": a.layer, "rows": rows}

    if 2 in parts:
        n = a.stream_tokens or ids.numel()
        x = ids[:n][None]
        rows = dict(old.get("stream", {}).get("rows", {})) if old.get("stream", {}).get("tokens") == n else {}
        full_label = "full attention, 1,024-token window recomputed every 256"
        t0 = time.perf_counter()
        r = None if (full_label in rows and a.stream_rows and "full" not in a.stream_rows) else sf.evaluate(sm, task, None, EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=256, ppl_max_tokens=n),
                                                    efficiency=False))
        if r is not None:
            rows[full_label] = {"perplexity": r.metrics["perplexity"], "peak_cache_bytes": None,
                                "seconds": time.perf_counter() - t0}
        for label, kind, opts in (("sinks 4 + window 1,020 (StreamingLLM)", "sinks", {"sinks": 4, "window": 1020}),
                                  ("window 1,024, no sinks", "sinks", {"sinks": 0, "window": 1024}),
                                  ("heavy hitters 256 + window 768 (H2O)", "h2o", {"heavy": 256, "window": 768})):
            if a.stream_rows and not any(x.strip() in label for x in a.stream_rows.split(",")):
                continue
            rows[label] = stream_perplexity(sm, x, kv_cache(sm, kind, **opts), chunk=64)
            print(label, rows[label], flush=True)
        set_attention_(sm, "sdpa")
        payload["stream"] = {"tokens": int(n), "rows": rows}

    if 3 in parts:
        rows = {}
        n = a.kv_windows * 2048
        for label, kind in (("float32 cache", "full"), ("int8 (KIVI)", "int8"), ("int4 (KIVI)", "int4")):
            cache = kv_cache(sm, kind)
            rows[label] = stream_perplexity(sm, ids[:n][None], cache, chunk=128, max_context=2048)
            if kind != "full":   # what one full 2,048-token window holds, by part (the last window)
                rows[label]["breakdown"] = {k: sum(layer.breakdown()[k] for layer in cache.layers)
                                            for k in ("codes", "scales", "float_tail")}
            print(label, rows[label], flush=True)
        set_attention_(sm, "sdpa")
        f = rows["float32 cache"]
        payload["kv_cache"] = {"tokens": n, "rows": rows}
    if old:                                                           # keep the parts not re-run
        for key in ("windows_2k", "stream", "kv_cache"):
            if key in old and key not in payload:
                payload[key] = old[key]
    md += markdown(payload)
    write("attention_smollm2", payload, "\n".join(md), a.out)


def markdown(payload: dict) -> list[str]:
    md = []
    if "windows_2k" in payload:
        p = payload["windows_2k"]
        rows, n = p["rows"], p["tokens"]
        base = rows["sdpa (full)"]["perplexity"]
        md += [f"## 1. Swapped in, 2,048-token windows ({n // 2048} windows, {n:,} tokens)", "",
               f"Attention error: relative L2 of layer {p.get('layer', 15)}'s attention output against eager, real "
               "queries/keys/values of the first window.", "",
               "| attention | perplexity | x full | attention error | seconds |", "|---|---:|---:|---:|---:|"]
        md += [f"| {k} | {r['perplexity']:.2f} | {r['perplexity'] / base:.2f}x | {r['attention_error']:.3f} | "
               f"{r['seconds']:.0f} |" for k, r in rows.items()]
        md.append("")
    if "stream" in payload:
        rows, n = payload["stream"]["rows"], payload["stream"]["tokens"]
        base = rows["full attention, 1,024-token window recomputed every 256"]["perplexity"]
        md += [f"## 2. Long text as one stream ({n:,} tokens, 64 at a time)", "",
               "| setting | perplexity | x full-window | peak cache MB | seconds |", "|---|---:|---:|---:|---:|"]
        mb = {k: "-" if r.get("peak_cache_bytes") is None else f"{r['peak_cache_bytes'] / 1e6:.1f}" for k, r in rows.items()}
        md += [f"| {k} | {r['perplexity']:.2f} | {r['perplexity'] / base:.3f}x | {mb[k]} | {r['seconds']:.0f} |"
               for k, r in rows.items()]
        md.append("")
    if "kv_cache" in payload:
        rows, n = payload["kv_cache"]["rows"], payload["kv_cache"]["tokens"]
        f = rows["float32 cache"]
        md += [f"## 3. KV-cache quantization at 2k context ({n // 2048} windows of 2,048 tokens, 128 at a time)", "",
               "Bytes: the cache's peak over a window: codes, fp16 scales and zero points, and the recent tokens kept "
               "in float32 (the model's dtype here). Against a bf16 cache (half the float32 one, on a model run in "
               "bf16, whose float tail would also be bf16), the last column: (codes + scales + tail / 2) / (float32 / 2).",
               "", "| cache | perplexity | x float | peak MB | x float32 cache | x bf16 cache |",
               "|---|---:|---:|---:|---:|---:|"]
        for k, r in rows.items():
            b = r.get("breakdown")
            vs_bf16 = "1.000" if b is None else \
                f"{(b['codes'] + b['scales'] + b['float_tail'] / 2) / (f['peak_cache_bytes'] / 2):.3f}"
            md.append(f"| {k} | {r['perplexity']:.3f} | {r['perplexity'] / f['perplexity']:.4f}x | "
                      f"{r['peak_cache_bytes'] / 1e6:.1f} | {r['peak_cache_bytes'] / f['peak_cache_bytes']:.3f} | {vs_bf16} |")
        md.append("")
    return md


if __name__ == "__main__":
    main()
