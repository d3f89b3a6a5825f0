"""Fast encoders end to end: the encoder-fast recipes against fp32 PyTorch and the best peers.

    python benchmarks/fast/minilm.py                     # runs the recipes (cached), then times everything
    python benchmarks/fast/minilm.py --recipes encoder-fast
    python benchmarks/fast/minilm.py --model sst2        # classifier-fast(est) on the SST-2 teacher

`--model sst2`: the same on a classifier, the fine-tuned SST-2 teacher of benchmarks/distill/sst2.py
(trained once and cached in .cache/bench/sst2-teacher), SST-2 dev accuracy, SST-2 train as
--unlabeled; writes fast_sst2.

Each recipe runs once through `slimformer.compress` on the default model (all-MiniLM-L6-v2), the
training sentences of benchmarks/distill (SST-2 train, Multi30k en train, STS-B train; never STS-B
dev) as --unlabeled, and STS-B dev as the task; its output folder is kept in .cache/bench/fast/
(delete it to re-run). Its wall time is the whole compress call (training, export, the per-stage
evaluations). Then, in one process and interleaved rounds, every variant is timed: throughput at
batch 32 x 128 and latency at batch 1 x 128 as ratios to fp32 PyTorch; peers: plain bf16 PyTorch
(`model.to(torch.bfloat16)`, fast on CPUs with AMX-BF16), ONNX Runtime's quantize_dynamic per
channel and, when `openvino` is installed, OpenVINO on the float graph (bf16 where the CPU has
it) and OpenVINO int8 through NNCF's post-training quantization (when `nncf` is installed);
slimformer's int8 recipe (ONNX Runtime) and int8-weights export (OpenVINO) on the unpruned model
for reference.
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, nncf_int8_peer, ort_int8_peer, sst2_teacher, timings, unlabeled_sentences, write  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_classification, run_stsb  # noqa: E402
from slimformer.recipes import CompressOptions  # noqa: E402
from slimformer.recipes.result import CompressionResult  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "fast"


def run_recipe(name: str, task, texts, out: Path, original=None) -> dict:
    """compress once (kept in the cache); {"seconds": wall time, "stages": ...}."""
    if not (out / "result.json").exists():
        t0 = time.perf_counter()
        sf.compress(copy.deepcopy(original) if original is not None else sf.load(), name, task, out,
                    CompressOptions(unlabeled=texts, progress=True))
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f} {torch.get_num_threads()}")
    res = CompressionResult.from_json((out / "result.json").read_text())
    secs, threads = None, None
    if (out / "wall_seconds.txt").exists():
        secs, threads = (float(x) for x in (out / "wall_seconds.txt").read_text().split())
    return {"seconds": secs, "threads": threads, "stages": res.stages, "deploy": res.steps[-1].details,
            "steps": [{"method": s.method, "seconds": s.seconds} for s in res.steps]}


def peers(base, calib, tmp: Path, threads: int):
    """(name, model, bytes) of what a user would try without us."""
    m = copy.deepcopy(base)
    m.model.to(torch.bfloat16)
    yield "peer: PyTorch bf16 (model.to(torch.bfloat16))", m, saved_bytes(base)["bytes"] // 2
    from slimformer.export import export_onnx

    plain = export_onnx(base, tmp / "ort-fp32", optimize=False)
    yield "peer: ONNX Runtime quantize_dynamic per-channel", *ort_int8_peer(plain, tmp / "ort-int8")
    from slimformer.export.runtime import load_onnx, openvino_available

    if openvino_available():  # the runtime Intel-CPU users pick; bf16 where the CPU has it
        m = load_onnx(plain, threads=threads, runtime="openvino")
        yield f"peer: OpenVINO {m.session.precision} (float graph)", m, (plain / "model.onnx").stat().st_size
        got = nncf_int8_peer(base, plain, tmp / "nncf", calib, threads)
        if got:
            yield "peer: OpenVINO int8 (NNCF quantize, static activations)", *got
        w8 = export_onnx(base, tmp / "sf-w8", quantize="int8-weights")
        yield ("slimformer int8-weights -> OpenVINO (6 layers, for reference)", load_onnx(w8, threads=threads),
               (w8 / "model.onnx").stat().st_size)
    else:
        print("openvino not installed: no OpenVINO peer (pip install openvino)")
    from slimformer.core.run import Run
    from slimformer.recipes import run_steps

    # what `slimformer compress --recipe int8` deploys
    _, art = run_steps(copy.deepcopy(base), sf.load_recipe("int8"),
                       Run(calibration=calib, artifact_dir=tmp / "recipe"))
    yield "slimformer recipe int8 (6 layers, for reference)", art, art.disk_bytes()["bytes"]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--model", choices=["minilm", "sst2"], default="minilm",
                    help="minilm: the default sentence encoder on STS-B; sst2: the fine-tuned SST-2 classifier")
    ap.add_argument("--recipes", nargs="*", default=None,
                    help="default: encoder-fast encoder-fastest (minilm), classifier-fast classifier-fastest (sst2)")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds")
    ap.add_argument("--name", default=None, help="results file name (default fast_minilm / fast_sst2)")
    ap.add_argument("--only-recipes", action="store_true", help="run the recipes (cached) and stop before timing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sst2 = a.model == "sst2"
    kind = "classifier" if sst2 else "encoder"
    a.recipes = a.recipes or [f"{kind}-fast", f"{kind}-fastest"]
    if sst2:
        task = sf.load_task("classification", a.data / "sst2" / "dev.tsv")
        texts = sf.load_task("classification", a.data / "sst2" / "train.tsv").texts()
        base = sst2_teacher(a.data)[0]
        metric, original = "accuracy", "fp32 PyTorch (the fine-tuned teacher)"
    else:
        task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
        texts = unlabeled_sentences(a.data)
        base = sf.load()
        metric, original = "spearman", "fp32 PyTorch (original)"
    cache = CACHE / a.model if sst2 else CACHE
    runs = {name: run_recipe(name, task, texts, cache / name, base) for name in a.recipes}
    if a.only_recipes:
        return
    measure = run_classification if sst2 else run_stsb
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=128)
    with tempfile.TemporaryDirectory() as d:
        built, quality = {}, {}
        variants = [(original, base, saved_bytes(base)["bytes"]), *peers(base, calib, Path(d), a.threads)]
        for name in a.recipes:
            art = sf.load(cache / name)
            if hasattr(art, "runtime"):  # an exported folder: its runtime with this run's thread count
                from slimformer.export.runtime import load_onnx

                art = load_onnx(cache / name, threads=a.threads)
            variants.append((f"slimformer recipe {name}", art, saved_bytes(art)["bytes"]))
        for name, m, nbytes in variants:
            sp = measure(m, task, TaskOptions(progress=False))[0][metric]
            built[name], quality[name] = m, {metric: sp, "bytes": nbytes}
            print(name, quality[name], flush=True)
        speed = timings(built, task.texts(), a.rounds)
    fp = {**quality[original], **speed[original]}
    best_peer = max((n for n in speed if n.startswith("peer")), key=lambda n: speed[n]["throughput"])
    payload = {"cpu": cpu_info(), "threads": a.threads, "rounds": a.rounds, "best_peer": best_peer, "metric": metric,
               "recipes": runs, "variants": {}}
    rows = []
    for name, q in quality.items():
        t = speed[name]
        v = {**q, **t, "throughput_x": t["throughput"] / fp["throughput"],
             "latency_x": fp["latency_ms_p50"] / t["latency_ms_p50"],
             "vs_best_peer": t["throughput"] / speed[best_peer]["throughput"]}
        payload["variants"][name] = v
        run = runs.get(name.replace("slimformer recipe ", ""))
        wall = f"{run['seconds'] / 60:.0f} min ({run['threads']:.0f} thr)" if run and run.get("seconds") else ""
        rows.append([name, q[metric], q[metric] - fp[metric], f"{100 * q[metric] / fp[metric]:.1f}%", q["bytes"] / 1e6,
                     q["bytes"] / fp["bytes"], v["throughput_x"], v["latency_x"], v["vs_best_peer"], wall])
    cpu = payload["cpu"]
    md = "\n".join([
        "# Fast classifiers: the fine-tuned SST-2 MiniLM teacher" if sst2 else
        "# Fast encoders: all-MiniLM-L6-v2 on STS-B", "",
        f"`python benchmarks/fast/minilm.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU {cpu.get('cpu_model', '?')}, "
        f"{cpu.get('cpu_capability')}, flags {' '.join(cpu.get('cpu_flags', []))}). "
        + ("SST-2 dev accuracy x100 (872 sentences)" if sst2 else "STS-B dev Spearman x100") + "; bytes on "
        "disk; throughput at batch 32 x 128 and latency at batch 1 x 128 as ratios to fp32 PyTorch, timed in "
        f"{a.rounds} interleaved rounds in this run (medians); 'vs best peer': throughput over the fastest peer "
        f"({best_peer}). Recipe wall time: the whole `compress` (training on {len(texts):,} sentences, export, "
        "per-stage evaluations) on this machine.", "",
        table(["variant", metric, "change", "of original", "MB", "bytes / fp32", "throughput x", "latency x", "vs best peer",
               "recipe time"], rows),
    ])
    write(a.name or ("fast_sst2" if sst2 else "fast_minilm"), payload, md, a.out)


if __name__ == "__main__":
    main()
