"""Which int8 for all-MiniLM-L6-v2 on CPU? ONNX Runtime variants against the peers a user has.

    python benchmarks/quantize/onnx_int8_explore.py            # ~35 min on 2 cores
    python benchmarks/quantize/onnx_int8_explore.py --quick    # fewer variants and rounds

For every variant: throughput at batch 32 x 128 tokens and cold batch-1 latency (1 x 128), both
as speed-up over float32 PyTorch eager measured in the same process (interleaved rounds, median,
torch and ORT on the same thread count, ORT worker threads not spinning - see spin_check);
embedding cosine to float32 torch (mean and min) and STS-B dev Spearman x100 over all 1500
pairs (3000 sentences); MB of the weight file. Then a longer head-to-head run of the variants
that matter (throughput and warm batch-1 latency), spinning on vs off, and a sensitivity check
(only one role of MatMul int8) that guided the choices.

Peers: torch.ao quantize_dynamic (qint8 Linear), ORT float32 on the plain export, and ORT
quantize_dynamic(per_channel=True) on the plain export with a default ORT session - what a user
gets without slimformer. Writes benchmarks/results/onnx_int8_explore.json and prints a table.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from slimformer.evaluate.efficiency import make_inputs  # noqa: E402
from slimformer.export import export_onnx, load_onnx  # noqa: E402
from slimformer.models import load  # noqa: E402

PEER = dict(smooth_alpha=None, reduce_range=False, fold_vo=False, embedding_bits=8)  # ORT's per-channel recipe as-is

# name -> (export_onnx kwargs or None for a torch variant, runtime: "ours" | "default" ORT session, note)
VARIANTS: dict[str, tuple] = {
    "torch fp32": (None, None, "baseline: PyTorch eager"),
    "torch qdynamic int8": (None, None, "peer: torch.ao quantize_dynamic(qint8, Linear)"),
    "ort fp32 plain": (dict(optimize=False), "default", "peer: plain export, default ORT session"),
    "ort fp32 fusion=cpu": (dict(optimize=True, fusion="cpu"), "ours", "GELU/LN fusions, SkipLN fusion off"),
    "ort fp32 fusion=full": (dict(optimize=True, fusion="full"), "default", "ORT optimizer defaults (Attention, SkipLN)"),
    "ort int8 peer (plain, per-channel)": (dict(optimize=False, quantize="int8", **PEER), "default",
                                           "peer: quantize_dynamic(per_channel=True) as a user would"),
    "int8 per-tensor": (dict(optimize=False, quantize="int8", **{**PEER, "per_channel": False}), "default", ""),
    "int8 per-channel uint8 weights": (dict(optimize=False, quantize="int8", **{**PEER, "weight_type": "uint8"}),
                                       "default", "u8u8 kernels: no saturation"),
    "int8 per-channel reduce_range all": (dict(optimize=False, quantize="int8", **{**PEER, "reduce_range": True}),
                                          "default", "7-bit weights"),
    "int8 fusion=full then quantize": (dict(optimize=True, fusion="full", quantize="int8", **PEER), "default",
                                       "QAttention + QEmbedLayerNorm"),
    "int8 fusion=cpu (no smoothing)": (dict(optimize=True, fusion="cpu", quantize="int8", **PEER), "ours",
                                       "peer recipe + our graph/session"),
    "int8 smooth a=0.5": (dict(quantize="int8", smooth_alpha=0.5), "ours", ""),
    "int8 smooth a=0.7": (dict(quantize="int8", smooth_alpha=0.7), "ours", ""),
    "int8 smooth a=0.9": (dict(quantize="int8", smooth_alpha=0.9), "ours", ""),
    "int8 smooth a=0.8, no floor": (dict(quantize="int8", smooth_floor=None), "ours",
                                    "scales from raw calibration max: rare channels get amplified"),
    "int8 smooth a=0.8, no reduce_range": (dict(quantize="int8", reduce_range=False), "ours", ""),
    "int8 smooth a=0.8, reduce_range q/k/v only": (dict(quantize="int8", reduce_range=("qkv",)), "ours", ""),
    "int8 smooth a=0.8, reduce_range all": (dict(quantize="int8", reduce_range=True), "ours", ""),
    "int8 smooth a=0.8, with v->o fold": (dict(quantize="int8", fold_vo=True), "ours", "o input smoothed in v/o weights"),
    "int8 smooth a=0.8, qkv+up only": (dict(quantize="int8", smooth_roles=("qkv", "up")), "ours",
                                       "no Mul on the 1536-wide FFN input"),
    "int8 smooth a=0.8, uint8 weights": (dict(quantize="int8", weight_type="uint8", reduce_range=False), "ours", ""),
    "int8 slimformer default + FastGelu": (dict(quantize="int8", gelu_approximation=True), "ours", ""),
    "int8 slimformer default": (dict(quantize="int8"), "ours", "smooth a=0.8 floor q0.5 (Mul on q/k/v, up, down "
                                "inputs), reduce_range q/k/v + o, no SkipLN fusion"),
}
SPIN = ["ort int8 peer (plain, per-channel)", "int8 slimformer default"]
# a longer interleaved run for the comparison that matters (the main table's 7 rounds move by ~5%)
H2H = ["torch fp32", "torch qdynamic int8", "ort fp32 plain", "ort int8 peer (plain, per-channel)",
       "int8 fusion=cpu (no smoothing)", "int8 slimformer default"]
QUICK = ["torch fp32", "torch qdynamic int8", "ort fp32 plain", "ort int8 peer (plain, per-channel)",
         "int8 fusion=cpu (no smoothing)", "int8 slimformer default"]


def stsb(path: Path):
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]


def spearman100(e1: torch.Tensor, e2: torch.Tensor, gold) -> float:
    from scipy.stats import spearmanr

    cos = torch.nn.functional.cosine_similarity(e1, e2).numpy()
    return float(spearmanr(cos, gold).statistic) * 100


def file_mb(folder: Path) -> float:
    return (folder / "model.onnx").stat().st_size / 1e6


def torch_mb(model) -> float:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


def build(name, spec, fp32, work: Path, threads: int, spin: bool = False):
    kwargs, runtime, _ = spec
    if kwargs is None:
        if name == "torch fp32":
            return fp32, torch_mb(fp32.model)
        from copy import deepcopy

        q = deepcopy(fp32)
        q.model = torch.ao.quantization.quantize_dynamic(q.model, {torch.nn.Linear}, dtype=torch.qint8)
        return q, torch_mb(q.model)
    folder = export_onnx(fp32, work / name.replace(" ", "_").replace("/", "_"), **kwargs)
    if runtime.startswith("default"):  # a user's plain InferenceSession: no disabled optimizers
        meta = json.loads((folder / "slimformer_onnx.json").read_text())
        meta["session"] = {}
        (folder / "slimformer_onnx.json").write_text(json.dumps(meta))
    return load_onnx(folder, threads=threads, spin=spin), file_mb(folder)


def timed(m, enc) -> float:
    # ORT worker threads busy-wait a while after a run; let them park so they do not steal the
    # cores from the next variant (not counted in the time)
    time.sleep(0.05)
    t = time.perf_counter()
    with torch.inference_mode():
        m.model(**enc)
    return time.perf_counter() - t


def spin_check(fp32, work: Path, threads: int, big, one, rounds: int) -> dict:
    """ORT's default lets idle worker threads busy-wait. Interleaved with other models that
    steals their cores (torch right after an ORT call measured 5-30x slower here), so the main
    table runs every ORT session with spinning off. Here: the same model with spinning on vs
    off, each timed in blocks of back-to-back calls of one session, 1 s apart; ms per call."""
    out = {}
    for n in SPIN:
        kwargs = dict(VARIANTS[n][0])
        for on in (True, False):
            m, _ = build(f"{n} spin" if on else n, (kwargs, VARIANTS[n][1], ""), fp32, work, threads, spin=on)
            for label, enc, k in (("32x128", big, 3), ("1x128", one, 20)):
                ts = []
                for _ in range(rounds):
                    time.sleep(1.0)
                    m.model(**enc)
                    t = time.perf_counter()
                    for _ in range(k):
                        m.model(**enc)
                    ts.append((time.perf_counter() - t) / k)
                out[f"{n}, spin {'on' if on else 'off'}, {label}"] = round(statistics.median(ts) * 1e3, 2)
            del m
    return out


def sensitivity(fp32, sents, ref, work: Path) -> dict:
    """1 - cosine when only one role of MatMul (or the embedding Gather) is int8, plain export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimformer.export.onnx import module_roles, onnx_node_roles, _quiet
    import onnx

    plain = export_onnx(fp32, work / "sens_plain", optimize=False)
    proto = onnx.load(str(plain / "model.onnx"))
    roles = onnx_node_roles(proto, module_roles(fp32.model))
    gathers = [n.name for n in proto.graph.node if n.op_type == "Gather" and "word_embeddings" in n.name]
    out = {}
    for role in ("qkv", "o", "up", "down", "embedding"):
        nodes = gathers if role == "embedding" else [n for n, r in roles.items() if r == role]
        for wt in (QuantType.QInt8, QuantType.QUInt8):
            dst = work / "sens_q.onnx"
            with _quiet():
                quantize_dynamic(plain / "model.onnx", dst, per_channel=True, weight_type=wt, nodes_to_quantize=nodes)
            (plain / "model.onnx").rename(plain / "model.fp32.onnx")
            dst.rename(plain / "model.onnx")
            m = load_onnx(plain, threads=2)
            e = m.embed(sents)
            out[f"{role} {wt.name}"] = round(1 - float((e * ref).sum(1).mean()), 5)
            (plain / "model.fp32.onnx").rename(plain / "model.onnx")
            print(f"  sensitivity {role:9s} {wt.name:6s} 1-cos {out[f'{role} {wt.name}']:.5f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved throughput rounds (batch 32 x 128)")
    ap.add_argument("--latency-rounds", type=int, default=20, help="interleaved batch-1 rounds")
    ap.add_argument("--h2h-rounds", type=int, default=25, help="rounds of the head-to-head run (H2H variants)")
    ap.add_argument("--quick", action="store_true", help="fewer variants, fewer rounds, no sensitivity check")
    ap.add_argument("--only", nargs="*", help="variant names to run (torch fp32 is always run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_int8_explore.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = QUICK if a.quick else list(VARIANTS)
    if a.only:
        names = ["torch fp32"] + [n for n in a.only if n != "torch fp32"]
    rounds, lat_rounds = (3, 8) if a.quick else (a.rounds, a.latency_rounds)

    fp32 = load()
    s1, s2, gold = stsb(a.data / "stsb" / "stsb-en-dev.csv")
    sents = s1 + s2
    ref = fp32.embed(sents)
    texts = s1[:400]
    big = make_inputs(fp32, texts, 32, 128)
    one = make_inputs(fp32, texts, 1, 128)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        models = {}
        for n in names:
            t0 = time.perf_counter()
            models[n], mb = build(n, VARIANTS[n], fp32, work, a.threads)
            e = models[n].embed(sents)
            cos = (torch.nn.functional.normalize(e, dim=-1) * ref).sum(1)
            results[n] = {"note": VARIANTS[n][2], "options": VARIANTS[n][0], "runtime": VARIANTS[n][1], "mb": mb,
                          "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                          "spearman": spearman100(e[: len(s1)], e[len(s1):], gold)}
            print(f"built {n}: cos {results[n]['cos_mean']:.5f} spearman {results[n]['spearman']:.2f} "
                  f"{mb:.1f} MB ({time.perf_counter() - t0:.0f}s)", flush=True)
        for m in models.values():  # warm-up
            timed(m, big), timed(m, one), timed(m, one)
        tp = {n: [] for n in names}
        lat = {n: [] for n in names}
        for _ in range(rounds):
            for n, m in models.items():
                tp[n].append(timed(m, big))
        for _ in range(lat_rounds):
            for n, m in models.items():
                lat[n].append(timed(m, one))
        base_tp, base_lat = statistics.median(tp["torch fp32"]), statistics.median(lat["torch fp32"])
        for n in names:
            t, l = statistics.median(tp[n]), statistics.median(lat[n])
            results[n].update({"throughput_ms": t * 1e3, "latency_ms": l * 1e3, "throughput_x": base_tp / t,
                               "latency_x": base_lat / l})
        h2h = [n for n in H2H if n in models]
        h2h_rounds = 5 if a.quick else a.h2h_rounds
        tp2 = {n: [] for n in h2h}
        lat2 = {n: [] for n in h2h}
        for _ in range(h2h_rounds):
            for n in h2h:
                tp2[n].append(timed(models[n], big))
            for n in h2h:  # warm latency, as evaluate() times it: back-to-back calls of one model
                timed(models[n], one)
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    for _ in range(5):
                        models[n].model(**one)
                lat2[n].append((time.perf_counter() - t0) / 5)
        for n in h2h:
            results[n]["h2h_throughput_x"] = statistics.median(tp2["torch fp32"]) / statistics.median(tp2[n])
            results[n]["h2h_latency_x"] = statistics.median(lat2["torch fp32"]) / statistics.median(lat2[n])
            results[n]["h2h_throughput_ms"] = statistics.median(tp2[n]) * 1e3
            results[n]["h2h_latency_ms"] = statistics.median(lat2[n]) * 1e3
        spin = {} if a.only else spin_check(fp32, work, a.threads, big, one, rounds)
        sens = {} if a.quick or a.only else sensitivity(fp32, sents[:400], ref[:400], work)

    rows = [[n, f"{r['throughput_x']:.2f}", f"{r['latency_x']:.2f}", f"{r['cos_mean']:.5f}", f"{r['cos_min']:.4f}",
             f"{r['spearman']:.2f}", f"{r['mb']:.1f}"] for n, r in results.items()]
    head = ["variant", "throughput x (32x128)", "latency x (1x128, cold)", "cos mean", "cos min", "STS-B spearman", "MB"]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print("\n" + line(head) + "\n" + "\n".join(line(r) for r in rows))
    print(f"\nspeed-ups over torch fp32 eager (median {rounds} rounds at 32x128 = "
          f"{base_tp * 1e3:.0f} ms, {lat_rounds} at 1x128 = {base_lat * 1e3:.1f} ms), {a.threads} threads")
    if h2h:
        print(f"\nhead-to-head, {h2h_rounds} interleaved rounds (batch-1 latency warm: 5 back-to-back calls "
              "per model per round):")
        for n in h2h:
            r = results[n]
            print(f"  {n:40s} throughput x{r['h2h_throughput_x']:.2f} ({r['h2h_throughput_ms']:.0f} ms)  "
                  f"latency x{r['h2h_latency_x']:.2f} ({r['h2h_latency_ms']:.1f} ms)")
    if spin:
        print("ORT worker-thread spinning (allow_spinning), ms per call, same-session blocks:", spin)
    if sens:
        print("sensitivity (1 - cos when only this role is int8):", sens)
    from common import provenance

    payload = {"benchmark": "onnx_int8_explore", "date": time.strftime("%Y-%m-%d %H:%M"), **provenance(),
               "machine": platform.machine(), "threads": a.threads, "rounds": rounds, "latency_rounds": lat_rounds,
               "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
               "data": "STS-B dev, 1500 pairs (3000 sentences)", "throughput_shape": [32, 128],
               "latency_shape": [1, 128],
               "latency_note": "main table: cold single calls (50 ms apart, interleaved); h2h: warm, back-to-back",
               "ort_sessions": "allow_spinning=0 in the main table (see spin_ms)",
               "h2h_rounds": h2h_rounds, "variants": results, "spin_ms": spin, "sensitivity_1_minus_cos": sens}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
