"""4-bit token embeddings in the int8 ONNX export of all-MiniLM-L6-v2: fidelity, bytes, speed.

    python benchmarks/quantize/onnx_embedding_bits.py             # ~10 min on 2 cores
    python benchmarks/quantize/onnx_embedding_bits.py --blocks 16 32 64 128 --rounds 9

For `export_onnx(sm, out, quantize="int8", embedding_bits=8)` (uint8 word-embedding table, as
quantize_dynamic writes it) and `embedding_bits=4` at each block size: cosine of the sentence
embeddings (mean pooling, normalized) to float32 PyTorch over the 3000 STS-B dev sentences (mean
and min), STS-B dev Spearman x100 (1500 pairs), model.onnx bytes and their share of the float32
parameter bytes, and throughput at batch 32 x 128 tokens as a ratio to the 8-bit export,
measured in interleaved rounds in this process (median; ORT sessions with `threads` intra-op
threads, worker threads not spinning). Everything else in the export is the default int8 recipe.
Writes benchmarks/results/onnx_int4_embedding.json (+ .md) and prints the table.
"""
from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common import base_parser, interleaved, spearman100, stsb, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs  # noqa: E402
from slimformer.export import EXPORT_OPTIONS, export_onnx, load_onnx  # noqa: E402
from slimformer.models import load  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

GATES = {"cos_mean_min": 0.995, "spearman_drop_max": 0.3, "bytes_share_max": 0.25}


def gather_session(folder: Path, output: str, threads: int):
    """The embedding lookup alone (input_ids -> dequantized token embeddings), cut from model.onnx."""
    import onnx
    import onnx.utils
    import onnxruntime as ort

    sub = onnx.utils.Extractor(onnx.load(str(folder / "model.onnx"))).extract_model(["input_ids"], [output])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--blocks", type=int, nargs="*", default=[16, 32, 64], help="4-bit block sizes to measure")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved throughput rounds at batch 32 x 128")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fp32 = load()
    fp32_bytes = sum(p.numel() * 4 for p in fp32.model.parameters())
    s1, s2, gold = stsb(a.data / "stsb" / "stsb-en-dev.csv")
    sents = s1 + s2
    ref = fp32.embed(sents)
    sp_ref = spearman100(ref, len(s1), gold)
    big = make_inputs(fp32, s1[:400], 32, 128)
    variants = {"8-bit (uint8 table)": dict(embedding_bits=8)}
    variants.update({f"4-bit block {b}": dict(embedding_bits=4, embedding_block_size=b) for b in a.blocks})
    results: dict[str, dict] = {}
    models, folders = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, kw in variants.items():
            t0 = time.perf_counter()
            folder = folders[name] = export_onnx(fp32, Path(d) / name.replace(" ", "_"), quantize="int8", **kw)
            m = models[name] = load_onnx(folder, threads=a.threads, spin=False)
            e = m.embed(sents)
            cos = torch.nn.functional.cosine_similarity(e, ref)
            nbytes = (folder / "model.onnx").stat().st_size
            sp = spearman100(e, len(s1), gold)
            step = next((s for s in m.meta["steps"] if s["step"] == "embedding_4bit"), {})
            results[name] = {"options": kw, "bytes": nbytes, "mb": nbytes / 1e6, "share_of_fp32": nbytes / fp32_bytes,
                             "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "spearman": sp,
                             "spearman_drop": sp_ref - sp, "embedding_step": step}
            print(f"{name}: cos {cos.mean():.5f} / {cos.min():.4f}, spearman {sp:.2f}, {nbytes / 1e6:.2f} MB "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
        with torch.inference_mode():
            tp = interleaved({n: (lambda m=m: m.model(**big)) for n, m in models.items()}, a.rounds)
        # the lookup alone: the dequantized token embeddings have the same tensor name in every variant
        out = next((r["embedding_step"]["output"] for r in results.values() if r["embedding_step"].get("applied")),
                   None)
        ids = {"input_ids": big["input_ids"].numpy()}
        lookups = {n: gather_session(f, out, a.threads) for n, f in folders.items()} if out else {}
        op = interleaved({n: (lambda s=s: s.run(None, ids)) for n, s in lookups.items()}, 5 * a.rounds)
    base = tp["8-bit (uint8 table)"]
    for n, r in results.items():
        r.update({"throughput_ms": tp[n] * 1e3, "throughput_x_vs_8bit": base / tp[n],
                  "lookup_ms": op[n] * 1e3 if n in op else None,
                  "passes": r["cos_mean"] >= GATES["cos_mean_min"] and r["spearman_drop"] <= GATES["spearman_drop_max"]
                  and r["share_of_fp32"] <= GATES["bytes_share_max"]})
    rows = [[n, r["cos_mean"], r["cos_min"], r["spearman"], r["spearman_drop"], r["mb"], 100 * r["share_of_fp32"],
             r["throughput_x_vs_8bit"], r["throughput_ms"], r["lookup_ms"], "yes" if r["passes"] else "no"]
            for n, r in results.items()]
    md = "\n".join([
        "# MiniLM int8 ONNX: 4-bit token embeddings", "",
        f"`python benchmarks/quantize/onnx_embedding_bits.py` ({a.threads} threads). Cosine of sentence embeddings "
        f"to float32 PyTorch over 3000 STS-B dev sentences; STS-B dev Spearman x100 (float32: {sp_ref:.2f}); % of "
        f"the float32 parameter bytes ({fp32_bytes / 1e6:.2f} MB); throughput at batch 32 x 128 as a ratio to the "
        f"8-bit export, median of {a.rounds} interleaved rounds (rough: shared 2-core machine); lookup ms: the "
        "token-embedding lookup alone (cut out of model.onnx) on the same 32 x 128 ids, median of "
        f"{5 * a.rounds} rounds. Gates: cosine mean >= 0.995, Spearman drop <= 0.3, bytes <= 25%.", "",
        table(["variant", "cos mean", "cos min", "spearman", "drop", "MB", "% fp32", "throughput x", "ms",
               "lookup ms", "gates"],
              rows),
    ])
    payload = {"threads": a.threads, "rounds": a.rounds, "throughput_shape": [32, 128],
               "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
               "python": platform.python_version(), "data": "STS-B dev, 1500 pairs (3000 sentences)",
               "fp32_param_bytes": fp32_bytes, "fp32_spearman": sp_ref, "gates": GATES,
               "export_defaults": {k: EXPORT_OPTIONS[k] for k in ("embedding_bits", "embedding_block_size")},
               "variants": results}
    write("onnx_int4_embedding", payload, md, a.out)


if __name__ == "__main__":
    main()
