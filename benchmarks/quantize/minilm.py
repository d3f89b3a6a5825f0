"""MiniLM (default model) int8: slimformer schemes against what a user would try elsewhere.

    python benchmarks/quantize/minilm.py            # ~15 min on 2 cores; run it alone on the machine

Every variant in one process, same inputs: STS-B dev Spearman, embedding cosine vs fp32,
throughput at batch 32 x 128 tokens, latency at batch 1 x 128 tokens (medians of interleaved rounds),
bytes on disk. Speed is reported as a ratio to fp32 PyTorch eager measured in this run.
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, ort_int8_peer, timings, write  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def torch_ao_dynamic(base):
    m = copy.deepcopy(base)
    m.model = torch.ao.quantization.quantize_dynamic(m.model, {torch.nn.Linear}, dtype=torch.qint8)
    return m


def variants(base, calib, tmp: Path):
    """(name, model, bytes) in the order measured."""
    yield "fp32 PyTorch eager", base, saved_bytes(base)["bytes"]
    m = torch_ao_dynamic(base)
    torch.save(m.model.state_dict(), tmp / "ao.pt")
    yield "peer: torch quantize_dynamic (qint8)", m, (tmp / "ao.pt").stat().st_size
    try:
        from slimformer.export import export_onnx, load_onnx
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:  # pragma: no cover
        print(f"skipping ONNX Runtime variants: {e}")
    else:
        plain = export_onnx(base, tmp / "ort-fp32", optimize=False)
        yield "peer: ONNX Runtime fp32", load_onnx(plain), (plain / "model.onnx").stat().st_size
        yield "peer: ONNX Runtime quantize_dynamic per-channel", *ort_int8_peer(plain, tmp / "ort-int8")
        ours = export_onnx(base, tmp / "sf-onnx-int8", quantize="int8", optimize="auto", calibration_texts=calib)
        yield "slimformer int8 -> ONNX Runtime (export --quantize int8)", load_onnx(ours), \
            (ours / "model.onnx").stat().st_size
        from slimformer.core.run import Run
        from slimformer.recipes import run_steps

        # what `slimformer compress --recipe int8` deploys
        _, art = run_steps(copy.deepcopy(base), sf.load_recipe("int8"),
                           Run(calibration=calib, artifact_dir=tmp / "recipe"))
        yield "slimformer recipe int8 (the README's main command)", art, art.disk_bytes()["bytes"]
    for name, steps in (("slimformer int8-torch (PyTorch, SmoothQuant + W8A8 dynamic)",
                         [sf.SmoothQuantConfig(alpha=0.5), sf.Int8DynamicConfig()]),
                        ("slimformer int8 (PyTorch, W8A8 dynamic)", [sf.Int8DynamicConfig()]),
                        ("slimformer int8-static (PyTorch, percentile)", [sf.Int8StaticConfig()])):
        m = copy.deepcopy(base)
        for c in steps:
            sf.quantize_(m, c, calib)
        yield name, m, saved_bytes(m)["bytes"]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = task.texts()
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=128)
    ref = base.embed(texts[:512])
    from slimformer.evaluate.result import cpu_info

    rows, payload = [], {"cpu": cpu_info(), "threads": a.threads, "seq_len": 128, "throughput_batch": 32, "latency_batch": 1,
                         "calibration": "128 SST-2 dev sentences",
                         "timing": f"{a.rounds} interleaved rounds x (2 calls at 32x128, 8 at 1x128), median", "variants": {}}
    with tempfile.TemporaryDirectory() as d:
        built, quality = {}, {}
        for name, m, nbytes in variants(base, calib, Path(d)):
            sp = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
            cos = torch.nn.functional.cosine_similarity(m.embed(texts[:512]), ref).mean().item()
            built[name], quality[name] = m, {"spearman": sp, "cosine": cos, "bytes": nbytes}
            print(name, quality[name], flush=True)
        speed = timings(built, texts, a.rounds)
    fp = {**quality["fp32 PyTorch eager"], **speed["fp32 PyTorch eager"]}
    for name, q in quality.items():
        t = speed[name]
        v = {**q, **t, "throughput_x": t["throughput"] / fp["throughput"],
             "latency_x": fp["latency_ms_p50"] / t["latency_ms_p50"]}
        payload["variants"][name] = v
        rows.append([name, q["spearman"], q["spearman"] - fp["spearman"], q["cosine"], q["bytes"] / 1e6,
                     q["bytes"] / fp["bytes"], v["throughput_x"], v["latency_x"], t["throughput"], t["latency_ms_p50"]])
        print(rows[-1], flush=True)
    md = "\n".join([
        "# MiniLM int8: slimformer vs peers", "",
        f"`python benchmarks/quantize/minilm.py` ({a.threads} threads). STS-B dev (1500 pairs) Spearman x100; "
        "cosine of sentence embeddings vs fp32 on 512 STS-B sentences; throughput = sentences/s at batch 32 x 128 "
        "tokens; latency at batch 1 x 128; speed-ups are ratios to fp32 PyTorch eager in this same run, timed in "
        f"{a.rounds} interleaved rounds (every variant once per round, medians). ONNX Runtime sessions use its default "
        "thread spinning.", "",
        table(["variant", "spearman", "drop", "cosine", "MB", "bytes / fp32", "throughput x", "latency x",
               "sent/s", "ms"], rows),
    ])
    write("quantize_minilm", payload, md, a.out)


if __name__ == "__main__":
    main()
