"""Quantized models that run faster: the kernel slimformer picks on this CPU against the peers.

    python benchmarks/runtime/kernels.py                 # both parts (~25 min on 2 cores; run it alone)
    python benchmarks/runtime/kernels.py --part minilm   # writes runtime_minilm
    python benchmarks/runtime/kernels.py --part lm       # writes runtime_lm (GPTQ model cached in .cache)

MiniLM (default model), one process, interleaved timing rounds: fp32 PyTorch, bf16 PyTorch
(`model.to(torch.bfloat16)`), torch `quantize_dynamic`, ONNX Runtime fp32 and int8 per-channel,
OpenVINO fp32 and bf16 (when `openvino` is installed: `pip install openvino`) and OpenVINO int8 through
NNCF's post-training quantization (when `nncf` is installed), slimformer's PyTorch
int8 (W8A8 dynamic) with the kernel `core.kernels` picks and with the float reference path, and
slimformer's ONNX int8 export. Throughput at batch 32 x 128, latency at 1 x 128 as ratios to fp32
PyTorch; cosine of embeddings vs fp32 on 512 STS-B dev sentences; STS-B dev Spearman.

SmolLM2-135M (the packaged GGUF, dequantized to float): float32, bf16, and the int4 schemes
`w4-g32-fz` (round-to-nearest, the GGUF's own Q4_1 grid) and `w4-gptq-rot` (GPTQ on a Hadamard-
rotated model, the best int4 group 128), each with the kernels slimformer picks (int4: torch's CPU
int4 kernel; the int8 tied head: torch._int_mm where the CPU has VNNI) and with the reference
kernels (dequantize every call); and ONNX Runtime on `export_onnx_lm`'s KV-cache graph: the float
model, and w4-g32-fz with its codes in MatMulNBits (w4-gptq-rot is refused there: its run-time
rotations are not in the graph). Decode tokens/s at batch 1 and 8 (32-token prompt, 32 greedy
steps through the KV cache), prefill tokens/s at 1 x 256, peak memory of the 1 x 256 prefill,
WikiText-2 raw test perplexity (8,192 tokens, window 1024, stride 512, as in quantize_lm).
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, nncf_int8_peer, openvino_on, ort_int8_peer, timings, write  # noqa: E402
from slimformer.core.kernels import kernel_report, kernels_of, use_kernels  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.efficiency import (TimingOptions, generation_speed, make_inputs,  # noqa: E402
                                            peak_memory_mb, saved_bytes)
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import run_stsb  # noqa: E402
from slimformer.models.loading import SLIM_WEIGHTS  # noqa: E402
from slimformer.quantize import scheme_steps  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "runtime"
REFERENCE = {"int8_linear": "float", "int4_linear": "dequant", "int8_head": "float"}


class Forced(torch.nn.Module):
    """Runs the wrapped model with the given kernel choices (timed side by side with the default)."""

    def __init__(self, inner, choices):
        super().__init__()
        self.inner, self.choices = inner, choices

    def forward(self, **kw):
        with use_kernels(**self.choices):
            return self.inner(**kw)


def forced(sm, choices):
    m = copy.copy(sm)
    m.model = Forced(sm.model, choices)
    return m


def minilm_variants(base, calib, tmp: Path, threads: int):
    """(name, model, bytes) in the order measured."""
    yield "fp32 PyTorch", base, saved_bytes(base)["bytes"]
    m = copy.deepcopy(base)
    m.model.to(torch.bfloat16)
    yield "peer: bf16 PyTorch (model.to(bfloat16))", m, saved_bytes(base)["bytes"] // 2
    m = copy.deepcopy(base)
    m.model = torch.ao.quantization.quantize_dynamic(m.model, {torch.nn.Linear}, dtype=torch.qint8)
    torch.save(m.model.state_dict(), tmp / "ao.pt")
    yield "peer: torch quantize_dynamic (qint8)", m, (tmp / "ao.pt").stat().st_size
    from slimformer.export import export_onnx, load_onnx

    plain = export_onnx(base, tmp / "ort-fp32", optimize=False)
    yield "peer: ONNX Runtime fp32", load_onnx(plain), (plain / "model.onnx").stat().st_size
    yield "peer: ONNX Runtime int8 per-channel", *ort_int8_peer(plain, tmp / "ort-int8")
    from slimformer.export.runtime import openvino_available

    if not openvino_available():
        print("openvino not installed: skipping the OpenVINO rows (pip install openvino)")
    else:
        for prec in ("f32", "bf16"):
            m = openvino_on(plain, plain / "model.onnx", threads, prec)
            yield f"peer: OpenVINO {prec}", m, (plain / "model.onnx").stat().st_size // (1 if prec == "f32" else 2)
        got = nncf_int8_peer(base, plain, tmp / "nncf", calib, threads)
        if got:
            yield "peer: OpenVINO int8 (NNCF quantize, static activations)", *got
    ours = copy.deepcopy(base)
    sf.quantize_(ours, sf.Int8DynamicConfig())
    picked = kernels_of(ours)
    yield f"slimformer int8 PyTorch, picked kernel ({picked.get('int8_linear')})", ours, saved_bytes(ours)["bytes"]
    yield "slimformer int8 PyTorch, reference kernel (float)", forced(ours, REFERENCE), saved_bytes(ours)["bytes"]
    exp = export_onnx(base, tmp / "sf-int8", quantize="int8", optimize="auto", calibration_texts=calib)
    yield "slimformer int8 -> ONNX Runtime (export --quantize int8)", load_onnx(exp), (exp / "model.onnx").stat().st_size
    if not openvino_available():
        return
    w8 = export_onnx(base, tmp / "sf-w8", quantize="int8-weights")
    m = load_onnx(w8, threads=threads)
    yield (f"slimformer int8 weights -> OpenVINO {m.session.precision} (export --quantize int8-weights)", m,
           (w8 / "model.onnx").stat().st_size)


def run_minilm(a) -> None:
    base = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = task.texts()
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=128)
    ref = base.embed(texts[:512])
    payload = {"cpu": cpu_info(), "kernels": kernel_report(), "threads": a.threads, "seq_len": 128,
               "throughput_batch": 32, "latency_batch": 1,
               "timing": f"{a.rounds} interleaved rounds x (2 calls at 32x128, 8 at 1x128), median", "variants": {}}
    built, quality = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, m, nbytes in minilm_variants(base, calib, Path(d), a.threads):
            sp = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
            emb = m.embed(texts[:512]).float()
            cos = torch.nn.functional.cosine_similarity(emb, ref).mean().item()
            built[name], quality[name] = m, {"spearman": sp, "cosine": cos, "bytes": nbytes}
            print(name, quality[name], flush=True)
        speed = timings(built, texts, a.rounds)
    fp = {**quality["fp32 PyTorch"], **speed["fp32 PyTorch"]}
    rows = []
    for name, q in quality.items():
        t = speed[name]
        v = {**q, **t, "throughput_x": t["throughput"] / fp["throughput"], "latency_x": fp["latency_ms_p50"] / t["latency_ms_p50"]}
        payload["variants"][name] = v
        rows.append([name, q["spearman"], q["cosine"], q["bytes"] / 1e6, v["throughput_x"], v["latency_x"],
                     t["throughput"], t["latency_ms_p50"]])
    peers = {n: v for n, v in payload["variants"].items() if n.startswith("peer:") and v["cosine"] >= 0.995}
    best = max(peers, key=lambda n: peers[n]["throughput_x"])
    payload["best_peer"] = best
    ours = {n: v for n, v in payload["variants"].items() if n.startswith("slimformer") and v["cosine"] >= 0.995}
    top = max(ours, key=lambda n: ours[n]["throughput_x"])
    payload["best_slimformer"] = top
    payload["best_slimformer_vs_best_peer"] = ours[top]["throughput_x"] / peers[best]["throughput_x"]
    c = payload["cpu"]
    md = "\n".join([
        "# MiniLM: the kernel slimformer picks vs the peers", "",
        f"`python benchmarks/runtime/kernels.py --part minilm` ({a.threads} threads) on {c.get('cpu_model', '?')}, "
        f"torch capability {c.get('cpu_capability')}, flags {' '.join(c.get('cpu_flags', []))}. Throughput = "
        "sentences/s at batch 32 x 128 tokens, latency at 1 x 128; ratios to fp32 PyTorch in this run "
        f"({a.rounds} interleaved rounds, medians). Cosine: embeddings vs fp32 on 512 STS-B dev sentences. "
        f"Best peer at cosine >= 0.995 by throughput: {best} ({peers[best]['throughput_x']:.2f}x). Fastest slimformer "
        f"path at cosine >= 0.995: {top} ({ours[top]['throughput_x']:.2f}x, "
        f"{payload['best_slimformer_vs_best_peer']:.2f}x the best peer).", "",
        table(["variant", "spearman", "cosine", "MB", "throughput x", "latency x", "sent/s", "ms"], rows),
    ])
    write("runtime_minilm", payload, md, a.out)


def lm_variants(base, calib, samples: int):
    yield "float32", base, {}
    m = copy.deepcopy(base)
    m.model.to(torch.bfloat16)
    yield "bf16 (model.to(bfloat16))", m, {}
    for scheme in ("w4-g32-fz", "w4-gptq-rot"):
        path = CACHE / f"smollm2-{scheme}-{samples}"
        if not (path / SLIM_WEIGHTS).exists():
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            for cfg in scheme_steps(scheme):
                if hasattr(cfg, "calibration_samples"):
                    cfg = dataclasses.replace(cfg, calibration_samples=samples)
                sf.quantize_(m, cfg, calib)
            print(f"{scheme}: quantized in {time.perf_counter() - t0:.0f} s", flush=True)
            sf.save(m, path)
        m = sf.load(path)
        yield f"{scheme}, picked kernels", m, None
        yield f"{scheme}, reference kernels (dequantize per call)", m, REFERENCE
        if scheme == "w4-g32-fz":        # w4-gptq-rot's run-time rotations are not in the ONNX graph (refused)
            yield f"{scheme} -> ONNX Runtime (MatMulNBits, accuracy level 4)", _ort(m, f"{scheme}-ort"), None
    yield "float32 -> ONNX Runtime (KV-cache graph)", _ort(base, "float-ort"), None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python not installed: skipping the llama.cpp rows")
        return
    from slimformer.export import export_gguf
    from slimformer.testing.packaged import smollm2_gguf

    threads = torch.get_num_threads()
    yield "peer: llama.cpp, the original Q4_1 GGUF", LlamaCpp(smollm2_gguf(), base.tokenizer, threads), None
    fz = sf.load(CACHE / f"smollm2-w4-g32-fz-{samples}")
    gguf_path = export_gguf(fz, CACHE / "smollm2-w4-g32-fz.gguf")
    yield "w4-g32-fz -> export --gguf -> llama.cpp", LlamaCpp(gguf_path, base.tokenizer, threads), None


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on a GGUF file, timed like the others: decode steps after a
    prefilled prompt, and a prefill of the same tokens; batch 1 only, no perplexity here."""

    kind = "causal-lm"

    def __init__(self, path: Path, tokenizer, threads: int):
        from llama_cpp import Llama

        self.path, self.tokenizer = Path(path), tokenizer
        self.llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=1024, verbose=False)
        self.config = None
        self.model = self._prefill

    def _prefill(self, input_ids=None, **kw):
        self.llm.reset()
        self.llm.eval(input_ids[0].tolist())

    def decode_seconds(self, prompt, steps: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt[0].tolist())
        t0 = time.perf_counter()
        for _ in range(steps):
            self.llm.eval([self.llm.sample(temp=0.0)])
        return time.perf_counter() - t0

    def disk_bytes(self) -> dict:
        return {"bytes": self.path.stat().st_size}


def _ort(sm, name: str):
    from slimformer.export import export_onnx_lm, load_onnx

    path = CACHE / f"smollm2-{name}"
    export_onnx_lm(sm, path, accuracy_level=4)      # a few seconds; never a stale graph from older code
    return load_onnx(path, threads=torch.get_num_threads(), spin=False)


def run_lm(a) -> None:
    from slimformer.testing.packaged import smollm2_gguf

    base = sf.load(smollm2_gguf())
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    calib = [l for l in (a.data / "wikitext2" / "valid.txt").read_text().splitlines() if l.strip()][:2000]
    texts = [t for t in task.texts() if len(t.split()) >= 8][:64]
    eopts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens, progress=False),
                        efficiency=False, threads=a.threads)
    topts = TimingOptions(decode_tokens=32, decode_prompt=32, prefill_len=256, generation_repeats=1)
    payload = {"cpu": cpu_info(), "kernels": kernel_report(), "threads": a.threads,
               "timing": f"{a.rounds} rounds (variants interleaved), each: prefill 1x256 once, decode 32 tokens after "
                         "a 32-token prompt at batch 1 and 8; medians over rounds", "variants": {}}
    built = {}
    for name, m, choices in lm_variants(base, calib, a.gptq_samples):
        if isinstance(m, LlamaCpp):     # timed below; perplexity and memory not measured through it
            built[name] = (m, choices)
            payload["variants"][name] = {"perplexity": None, "bytes": m.disk_bytes()["bytes"], "kernels": {},
                                         "peak_memory_mb": None}
            continue
        with use_kernels(**(choices or {})):
            ppl = sf.evaluate(m, task, None, eopts).metrics["perplexity"]
            used = kernels_of(m)
            mem = peak_memory_mb(m, make_inputs(m, texts, 1, 256))
        built[name] = (m, choices)
        payload["variants"][name] = {"perplexity": ppl, "bytes": saved_bytes(m)["bytes"], "kernels": used,
                                     "peak_memory_mb": mem}
        print(name, payload["variants"][name], flush=True)
    runs = {n: [] for n in built}
    for _ in range(a.rounds):
        for name, (m, choices) in built.items():
            opts = dataclasses.replace(topts, decode_batches=(1,)) if isinstance(m, LlamaCpp) else topts
            with use_kernels(**(choices or {})):
                runs[name].append(generation_speed(m, texts, opts))
            time.sleep(0.3)
    for name, rs in runs.items():
        for k in rs[0]:
            payload["variants"][name][k] = statistics.median(r[k] for r in rs)
        print(name, {k: round(payload["variants"][name][k], 2) for k in rs[0]}, flush=True)
    fl = payload["variants"]["float32"]
    rows = []
    for name, v in payload["variants"].items():
        for k, x in (("decode_tokens_per_s", "decode_x"), ("decode_tokens_per_s_batch8", "decode_batch8_x"),
                     ("prefill_tokens_per_s", "prefill_x")):
            v[x] = v[k] / fl[k] if k in v else None
        rows.append([name, ", ".join(f"{o}={i}" for o, i in v["kernels"].items()) or "-",
                     "-" if v["perplexity"] is None else v["perplexity"], v["bytes"] / 1e6, v["decode_tokens_per_s"],
                     v["decode_x"], v.get("decode_tokens_per_s_batch8", "-"), v["decode_batch8_x"] or "-",
                     v["prefill_tokens_per_s"], v["prefill_x"], "-" if v["peak_memory_mb"] is None else v["peak_memory_mb"]])
    c = payload["cpu"]
    md = "\n".join([
        "# SmolLM2-135M: int4 decoding speed with the kernel slimformer picks", "",
        f"`python benchmarks/runtime/kernels.py --part lm` ({a.threads} threads) on {c.get('cpu_model', '?')}, torch "
        f"capability {c.get('cpu_capability')}, flags {' '.join(c.get('cpu_flags', []))}. Decode: tokens/s of 32 greedy "
        "steps through the KV cache after a 32-token prompt (batch 8: tokens of all rows); prefill: 1 x 256 tokens in "
        f"one forward; medians of {a.rounds} interleaved rounds; x = ratio to float32 in this run. Perplexity: "
        f"WikiText-2 raw test, first {a.ppl_max_tokens} tokens, window 1024, stride 512. The float model is the "
        "packaged Q4_1 GGUF dequantized. w4-gptq-rot calibrates on "
        f"{a.gptq_samples} WikiText-2 valid sequences. Peak memory: RSS growth of the 1 x 256 prefill plus the weights. "
        "llama.cpp (llama-cpp-python, built here from source with GGML_NATIVE): batch 1 only, greedy sampling in its "
        "own loop, no perplexity measured through it.", "",
        table(["variant", "kernels", "perplexity", "MB", "decode tok/s", "x", "batch 8 tok/s", "x", "prefill tok/s",
               "x", "peak MB"], rows),
    ])
    write("runtime_lm", payload, md, a.out)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--part", choices=("all", "minilm", "lm"), default="all")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--gptq-samples", type=int, default=64, help="calibration sequences for w4-gptq-rot")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.part in ("all", "minilm"):
        run_minilm(a)
    if a.part in ("all", "lm"):
        run_lm(a)


if __name__ == "__main__":
    main()
