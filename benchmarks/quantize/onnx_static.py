"""Static int8 (`export_onnx(..., quantize="int8-static")`) of all-MiniLM-L6-v2 against dynamic int8.

    python benchmarks/quantize/onnx_static.py              # ~6 min on 2 cores
    python benchmarks/quantize/onnx_static.py --rounds 7   # steadier throughput ratio

For each observer (minmax, percentile 99.999, mse -> ORT Entropy), per-channel int8 weights,
calibrated on 128 SST-2 dev sentences: mean cosine of the sentence embeddings to float32 PyTorch
over 512 STS-B dev sentences, STS-B dev Spearman x100 (1500 pairs), model.onnx MB, how much stays
int8 in the graph ONNX Runtime's session builds (int8 ops, tensors passed int8 op -> int8 op,
DequantizeLinear left; `slimformer.export.onnx.int8_flow`), and throughput at batch 32 x 128 as a
ratio to the dynamic int8 export (median of interleaved rounds, ORT threads not spinning; rough).
Writes benchmarks/results/onnx_static.json (+ .md).
"""
from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, interleaved, spearman100, stsb, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs  # noqa: E402
from slimformer.export import export_onnx, load_onnx  # noqa: E402
from slimformer.export.onnx import int8_flow  # noqa: E402
from slimformer.models import load  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def session_graph(folder: Path, path: Path):
    """The graph ONNX Runtime runs (after its QDQ -> int8-kernel fusions), as saved by the session."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(path)
    ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds at batch 32 x 128")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fp32 = load()
    s1, s2, gold = stsb(a.data / "stsb" / "stsb-en-dev.csv")
    sents = s1 + s2
    ref = fp32.embed(sents[:512])
    sp_ref = spearman100(fp32.embed(sents), len(s1), gold)
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=128)
    big = make_inputs(fp32, s1[:400], 32, 128)
    variants = {"dynamic int8 (export default)": dict(quantize="int8")}
    variants.update({f"static int8, {obs}": dict(quantize="int8-static", static_observer=obs)
                     for obs in ("minmax", "percentile", "mse")})
    results, models = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, kw in variants.items():
            folder = export_onnx(fp32, Path(d) / name.replace(" ", "_").replace(",", ""), calibration_texts=calib,
                                 **kw)
            m = models[name] = load_onnx(folder, threads=a.threads, spin=False)
            cos = torch.nn.functional.cosine_similarity(m.embed(sents[:512]), ref)
            sp = spearman100(m.embed(sents), len(s1), gold)
            flow = int8_flow(session_graph(folder, Path(d) / "session.onnx"))
            step = next(s for s in m.meta["steps"] if s["step"].startswith("quantize_"))
            nbytes = (folder / "model.onnx").stat().st_size
            results[name] = {"options": kw, "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                             "spearman": sp, "mb": nbytes / 1e6, "session_graph": flow, "quantize_step": step}
            print(name, f"cos {cos.mean():.4f} spearman {sp:.2f} {nbytes / 1e6:.2f} MB", flow, flush=True)
        with torch.inference_mode():
            tp = interleaved({n: (lambda m=m: m.model(**big)) for n, m in models.items()}, a.rounds)
    base = tp["dynamic int8 (export default)"]
    for n, r in results.items():
        r.update({"batch32_ms": tp[n] * 1e3, "throughput_x_vs_dynamic": base / tp[n]})
    rows = [[n, r["cos_mean"], r["cos_min"], r["spearman"], r["mb"], r["session_graph"]["int8_ops"],
             r["session_graph"]["int8_edges"], r["session_graph"]["ops"].get("DequantizeLinear", 0),
             r["throughput_x_vs_dynamic"]] for n, r in results.items()]
    md = "\n".join([
        "# MiniLM ONNX: static int8 (QDQ) vs dynamic int8", "",
        f"`python benchmarks/quantize/onnx_static.py` ({a.threads} threads). Calibration: 128 SST-2 dev sentences. "
        f"Cosine of sentence embeddings to float32 PyTorch over 512 STS-B dev sentences; STS-B dev Spearman x100, "
        f"1500 pairs (float32: {sp_ref:.2f}). int8 ops / int8 edges / DQ left: in the graph ONNX Runtime's session "
        "runs (QLinear* ops; tensors an int8 op hands to another int8 op without dequantizing; DequantizeLinear "
        f"nodes left). Throughput: batch 32 x 128, ratio to the dynamic export, median of {a.rounds} interleaved "
        "rounds on a shared 2-core machine (rough). mse = ONNX Runtime's Entropy calibration (ORT has no MSE).", "",
        table(["variant", "cos mean", "cos min", "spearman", "MB", "int8 ops", "int8 edges", "DQ left",
               "throughput x"], rows),
    ])
    payload = {"threads": a.threads, "rounds": a.rounds, "throughput_shape": [32, 128], "torch": torch.__version__,
               "onnxruntime": __import__("onnxruntime").__version__, "python": platform.python_version(),
               "calibration": "128 SST-2 dev sentences", "fp32_spearman": sp_ref, "variants": results}
    write("onnx_static", payload, md, a.out)


if __name__ == "__main__":
    main()
