"""Efficient attention in all-MiniLM-L6-v2 on STS-B dev (86.72), no training, and GQA conversion
with and without a short recovery.

1. Each attention implementation swapped in: Spearman, and its error against eager on real
   queries/keys/values (layer 3, 32 dev sentences padded to their longest, relative L2).
   STS-B sentences are short (most under 32 tokens): windows of 32 and more cover them.
2. GQA: the 12 key/value heads of every layer mean-pooled into 4 and into 1 (MQA), Spearman
   before and after a short recovery (distillation from the original, embedding cosine, one
   pass over --recovery-sentences unlabeled training sentences), throughput at batch 32 x 128
   and latency at batch 1 x 128 as ratios to the original, interleaved in this run.

    python benchmarks/attention/minilm.py               # ~20 min on 2 cores
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, timings, unlabeled_sentences, write  # noqa: E402
from slimformer.attention import ATTENTION, GQAConfig, set_attention_  # noqa: E402
from slimformer.core.config import apply_method  # noqa: E402
from slimformer.evaluate import TaskOptions  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import run_stsb  # noqa: E402
from slimformer.recipes import CompressOptions  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "attention"

VARIANTS = {
    "sdpa (full)": ("sdpa", {}),
    "sliding_window 64": ("sliding_window", {"window": 64}),
    "sliding_window 32": ("sliding_window", {"window": 32}),
    "sliding_window 16": ("sliding_window", {"window": 16}),
    "sliding_window 8": ("sliding_window", {"window": 8}),
    "sliding_window 8 + [CLS] global": ("sliding_window", {"window": 8, "global_tokens": (0,)}),
    "block_sparse b8 (3 + 1 global + 1 random)": ("block_sparse", {"block": 8, "random_blocks": 1}),
    "lsh 4 buckets x 2 rounds": ("lsh", {"buckets": 4, "rounds": 2}),
    "linear performer 256": ("linear", {"feature_map": "performer", "features": 256}),
    "linear elu": ("linear", {"feature_map": "elu"}),
    "nystrom 8 landmarks": ("nystrom", {"landmarks": 8}),
    "pooled stride 2": ("pooled", {"stride": 2}),
}


def captured(sm, texts, layer: int):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    from slimformer.attention.hf import key_mask_from

    got = {}

    def capture(module, q, k, v, mask, scaling=None, **kw):
        km = key_mask_from(mask, k.shape[2])
        if getattr(module, "slim_bench_layer", None) == layer:
            got["x"] = (q.clone(), k.clone(), v.clone(), km, scaling)
        out = ATTENTION.get("sdpa").fn(q, k, v, km, False, scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("bench_capture_enc", capture)
    ALL_MASK_ATTENTION_FUNCTIONS.register("bench_capture_enc", flash_attention_mask)
    for i, lay in enumerate(sm.model.encoder.layer):
        lay.attention.self.slim_bench_layer = i
    prev = sm.model.config._attn_implementation
    sm.model.config._attn_implementation = "bench_capture_enc"
    with torch.inference_mode():
        sm.model(**sm.tokenize(texts, 128))
    sm.model.config._attn_implementation = prev
    return got["x"]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--recovery-sentences", type=int, default=20000)
    ap.add_argument("--parts", default="1,2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    parts = {int(p) for p in a.parts.split(",")}
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    base = sf.load()
    opts = TaskOptions(progress=False)
    payload = {"cpu": cpu_info(), "threads": a.threads}
    md = ["# Efficient attention in all-MiniLM-L6-v2 (STS-B dev)", "",
          f"`python benchmarks/attention/minilm.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
          f"{payload['cpu'].get('cpu_model', '?')}, torch capability {payload['cpu'].get('cpu_capability', '?')}).", ""]
    full = run_stsb(base, task, opts)[0]["spearman"]
    if 1 in parts:
        texts = [p[0] for p in task.examples[:32]]
        q, k, v, km, sc = captured(base, texts, 3)
        ref = ATTENTION.get("eager").fn(q, k, v, km, False, sc)
        rows = {}
        for label, (name, o) in VARIANTS.items():
            m = copy.deepcopy(base)
            set_attention_(m, name, **o)
            out = ATTENTION.get(name).fn(q, k, v, km, False, sc, **o)
            real = km[:, None, :, None] if km is not None else 1.0
            err = (((out - ref) * real).norm() / (ref * real).norm()).item()
            rows[label] = {"spearman": run_stsb(m, task, opts)[0]["spearman"], "attention_error": err}
            print(label, rows[label], flush=True)
        payload["swapped"] = rows
        md += ["## 1. Swapped in, no training", "",
               "| attention | Spearman | change | attention error (layer 3) |", "|---|---:|---:|---:|"]
        md += [f"| {k} | {r['spearman']:.2f} | {r['spearman'] - full:+.2f} | {r['attention_error']:.3f} |"
               for k, r in rows.items()]
        md.append("")
    if 2 in parts:
        sentences = unlabeled_sentences(a.data)[: a.recovery_sentences]
        models, rows = {"original": base}, {"original": {"spearman": full}}
        for kv in (4, 1):
            m = copy.deepcopy(base)
            apply_method(m, GQAConfig(kv_heads=kv))
            before = run_stsb(m, task, opts)[0]["spearman"]
            recipe = sf.load_recipe({"name": f"gqa{kv}", "steps": [
                {"method": "gqa", "kv_heads": kv},
                {"method": "distill", "losses": ["embedding_cosine"], "epochs": 1, "lr": 1e-4 if kv > 1 else 5e-4}]})
            out = CACHE / f"minilm-gqa{kv}"
            res = sf.compress(copy.deepcopy(base), recipe, task, out,
                              CompressOptions(unlabeled=sentences, progress=True, evaluate=sf.EvalOptions(efficiency=False)))
            rec = sf.load(out)
            after = run_stsb(rec, task, opts)[0]["spearman"]
            label = f"{kv} key/value head{'s' if kv > 1 else ''} ({'GQA' if kv > 1 else 'MQA'})"
            rows[label] = {"spearman_pooled": before, "spearman": after, "params": rec.num_params(),
                           "recovery_seconds": sum(s.seconds for s in res.steps)}
            models[label] = rec
            print(label, rows[label], flush=True)
        sp = timings(models, [p[0] for p in task.examples], rounds=5)
        for k in rows:
            rows[k].update(sp[k])
        payload["gqa"] = rows
        o = rows["original"]
        md += [f"## 2. GQA / MQA by conversion ({len(sentences):,} recovery sentences, one pass)", "",
               "| model | params M | Spearman, pooled only | Spearman, recovered | throughput x | latency x |",
               "|---|---:|---:|---:|---:|---:|"]
        md.append(f"| original (12 heads) | {base.num_params() / 1e6:.2f} | - | {full:.2f} | 1.00x | 1.00x |")
        for k, r in rows.items():
            if k == "original":
                continue
            md.append(f"| {k} | {r['params'] / 1e6:.2f} | {r['spearman_pooled']:.2f} | {r['spearman']:.2f} | "
                      f"{r['throughput'] / o['throughput']:.2f}x | {o['latency_ms_p50'] / r['latency_ms_p50']:.2f}x |")
        md.append("")
    write("attention_minilm", payload, "\n".join(md), a.out)


if __name__ == "__main__":
    main()
