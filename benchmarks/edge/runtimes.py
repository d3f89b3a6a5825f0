"""ExecuTorch (XNNPACK) against ONNX Runtime, llama.cpp and fp32 PyTorch on the same CPU.

    python benchmarks/edge/runtimes.py                    # encoders, then SmolLM2
    python benchmarks/edge/runtimes.py --parts encoders
    python benchmarks/edge/runtimes.py --parts lm

Encoders (all-MiniLM-L6-v2 on STS-B dev): fp32 PyTorch; ONNX Runtime float32 and slimformer's int8
export (the `int8` recipe's graph); ExecuTorch float32 and int8 (`slimformer export --executorch
[--quantize int8]`); the encoder-fast student (3 layers, distilled; the cached output of
`python benchmarks/fast/minilm.py --recipes encoder-fast`, cast to float32) in ExecuTorch int8 and
ONNX Runtime int8. Throughput at batch 32 x 128 (ExecuTorch: a program exported with batch 32)
and latency at batch 1 x 128 (a batch-1 program), as ratios to fp32 PyTorch, timed in interleaved
rounds in this one process (common.timings); bytes of the file each runtime loads; Spearman x100
of each artifact as `slimformer evaluate` runs it.

LM (SmolLM2-135M-Instruct, the packaged GGUF dequantized to float32): greedy decode tokens/s after
a 32-token prompt, batch 1, 64 tokens, medians of interleaved rounds: PyTorch fp32 (transformers'
KV cache), ExecuTorch float32 and int4 (8-bit dynamic activations x 4-bit weights in groups of
32, torchao), ONNX Runtime (export_onnx_lm: float32, and int4 RTN g32 as MatMulNBits), and
llama.cpp on the packaged Q4_1 GGUF when llama-cpp-python is installed.
"""
from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import CACHE, base_parser, spearman100, stsb, timings, write  # noqa: E402
from slimformer.evaluate.efficiency import decode_seconds  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

STUDENT = CACHE / "fast" / "encoder-fast"


class _ByBatch:
    """A batch-1 and a batch-32 ExecuTorch program of one model behind one .model(**enc): each
    input goes to the program made for its batch."""

    def __init__(self, one, many):
        self.one, self.many = one, many
        self.tokenizer, self.kind, self.pooling, self.config = one.tokenizer, one.kind, one.pooling, one.config
        self.model = self

    def __call__(self, **enc):
        return (self.one if enc["input_ids"].shape[0] == 1 else self.many).model(**enc)


def _pte(sm, folder: Path, name: str, quantize=None, batch_size=1):
    from slimformer.export import export_executorch, load_executorch

    return load_executorch(export_executorch(sm, folder / f"{name}-b{batch_size}.pte", quantize=quantize,
                                             batch_size=batch_size), threads=torch.get_num_threads())


def encoders(a, tmp: Path) -> tuple[list, dict]:
    from slimformer.export import export_onnx, load_onnx

    s1, s2, gold = stsb(a.data / "stsb" / "stsb-en-dev.csv")
    texts = s1 + s2
    base = sf.load()
    models, files = {"fp32 PyTorch": base}, {"fp32 PyTorch": None}
    sources = [("MiniLM (6 layers)", base)]
    if STUDENT.exists():
        student = sf.load(STUDENT)
        student.model.float()
        sources.append(("encoder-fast student (3 layers)", student))
    else:
        print(f"no {STUDENT}: run python benchmarks/fast/minilm.py --recipes encoder-fast first; the student is left out")
    for label, sm in sources:
        short = "minilm" if sm is base else "student"
        for q in ((None, "int8") if sm is base else ("int8",)):
            name = f"{label}: ExecuTorch {q or 'float32'}"
            t0 = time.perf_counter()
            one = _pte(sm, tmp, f"{short}-{q}", q, 1)
            many = _pte(sm, tmp, f"{short}-{q}", q, 32)
            print(f"{name}: exported twice in {time.perf_counter() - t0:.0f} s")
            models[name], files[name] = _ByBatch(one, many), one.path
        for q in ((None, "int8") if sm is base else ("int8",)):
            name = f"{label}: ONNX Runtime {q or 'float32'}"
            folder = export_onnx(copy.deepcopy(sm), tmp / f"{short}-onnx-{q}", quantize=q)
            models[name], files[name] = load_onnx(folder, threads=torch.get_num_threads()), folder / "model.onnx"
    rows, raw = [], {}
    spear = {n: spearman100((m.one if isinstance(m, _ByBatch) else m).embed(texts, 32), len(s1), gold)
             for n, m in models.items()}
    t = timings(models, texts, a.rounds)
    ref = t["fp32 PyTorch"]
    fp32_bytes = sum(p.numel() * 4 for p in base.model.parameters())
    for n in models:
        size = files[n].stat().st_size if files[n] is not None else fp32_bytes
        raw[n] = {"spearman": spear[n], "bytes": size, **t[n]}
        rows.append([n, f"{spear[n]:.2f}", f"{spear[n] - spear['fp32 PyTorch']:+.2f}", f"{size / 1e6:.1f}",
                     f"{size / fp32_bytes:.3f}", f"{t[n]['throughput'] / ref['throughput']:.2f}",
                     f"{ref['latency_ms_p50'] / t[n]['latency_ms_p50']:.2f}", f"{t[n]['latency_ms_p50']:.1f}"])
    return rows, raw


class _LlamaCpp:
    """llama.cpp (llama-cpp-python) on a .gguf behind decode_seconds(prompt, steps)."""

    def __init__(self, path, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.model = None  # not a torch module: decode_seconds asks this object

    def decode_seconds(self, prompt, steps: int) -> float:
        gen = self.llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, reset=True)  # greedy
        next(gen)  # the prefill and the first token
        t0 = time.perf_counter()
        for _ in range(steps):
            next(gen)
        return time.perf_counter() - t0


def lm(a, tmp: Path) -> tuple[list, dict]:
    import importlib.util

    from slimformer.export import export_onnx_lm, load_onnx
    from slimformer.testing.packaged import smollm2_gguf

    gguf = smollm2_gguf()
    base = sf.load(gguf)
    threads = torch.get_num_threads()
    text = (a.data / "wikitext2raw" / "wiki.test.raw").read_text()[:4000]
    prompt = base.tokenizer(text, return_tensors="pt")["input_ids"][:, :32]
    runs = {"fp32 PyTorch (transformers KV cache)": base}
    for q in (None, "int4"):
        t0 = time.perf_counter()
        runs[f"ExecuTorch {q or 'float32'}"] = _pte_lm(base, tmp, q, threads)
        print(f"ExecuTorch {q or 'float32'}: exported in {time.perf_counter() - t0:.0f} s")
    runs["ONNX Runtime float32 (export_onnx_lm)"] = load_onnx(export_onnx_lm(base, tmp / "ort-f32"), threads=threads)
    q4 = copy.deepcopy(base)
    sf.quantize_(q4, sf.WeightOnlyConfig(bits=4, group_size=32))
    runs["ONNX Runtime int4 RTN g32 (MatMulNBits)"] = load_onnx(export_onnx_lm(q4, tmp / "ort-q4"), threads=threads)
    del q4
    if importlib.util.find_spec("llama_cpp") is not None:
        runs["llama.cpp Q4_1 (the packaged GGUF)"] = _LlamaCpp(gguf, threads)
    else:
        print("llama-cpp-python is not installed: llama.cpp left out (pip install llama-cpp-python builds it)")
    steps = a.decode_tokens
    secs = {n: [] for n in runs}
    for m in runs.values():
        decode_seconds(m, prompt, 4)  # warm-up
    for r in range(a.rounds):  # the order flips every round so drift hits all alike
        for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            time.sleep(0.05)  # let ORT worker threads park
            secs[n].append(decode_seconds(runs[n], prompt, steps))
    tps = {n: steps / statistics.median(v) for n, v in secs.items()}
    ref = tps["fp32 PyTorch (transformers KV cache)"]
    rows = [[n, f"{v:.1f}", f"{v / ref:.2f}"] for n, v in tps.items()]
    return rows, {"decode_tokens_per_s": tps, "prompt_tokens": int(prompt.shape[1]), "decode_tokens": steps}


def _pte_lm(base, tmp: Path, q, threads: int):
    """The SmolLM2 .pte (3-7 min to lower on 2 cores), kept in .cache/bench/edge and reused: delete it
    there after changing the export."""
    from slimformer.export import export_executorch, load_executorch
    from slimformer.export.executorch import written_by_slimformer

    path = CACHE / "edge" / f"smollm2-{q or 'float32'}.pte"
    if not written_by_slimformer(path):
        export_executorch(base, path, quantize=q, max_seq_len=256)
    return load_executorch(path, threads=threads)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--parts", nargs="+", default=["encoders", "lm"], choices=["encoders", "lm"])
    ap.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds (default 6)")
    ap.add_argument("--decode-tokens", type=int, default=64, help="greedy tokens per decode timing (default 64)")
    ap.add_argument("--name", default="edge_executorch")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cpu = cpu_info()
    payload, md = {"threads": a.threads, "rounds": a.rounds}, [f"# ExecuTorch (XNNPACK) on the same CPU as ONNX Runtime and PyTorch\n\n"
                                                              f"`{' '.join(['python', *sys.argv])}` ({a.threads} threads, CPU "
                                                              f"{cpu.get('cpu_model', '?')}, torch capability {cpu.get('cpu_capability', '?')}, "
                                                              f"flags {' '.join(cpu.get('cpu_flags', []))}).\n"]
    with tempfile.TemporaryDirectory() as tmp:
        if "encoders" in a.parts:
            rows, raw = encoders(a, Path(tmp))
            payload["encoders"] = raw
            md.append("\n## Encoders: all-MiniLM-L6-v2, STS-B dev\n\nThroughput at batch 32 x 128 and latency at batch "
                      "1 x 128 as ratios to fp32 PyTorch, interleaved rounds in this run; MB: the file the runtime loads "
                      "(fp32 PyTorch: its float32 parameters).\n\n")
            md.append(table(["variant", "spearman", "change", "MB", "bytes / fp32", "throughput x", "latency x",
                             "latency ms"], rows))
            write(a.name, payload, "".join(md) + "\n", a.out)  # kept if the LM part fails
        if "lm" in a.parts:
            rows, raw = lm(a, Path(tmp))
            payload["lm"] = raw
            md.append(f"\n\n## SmolLM2-135M-Instruct: greedy decoding, batch 1\n\n{raw['decode_tokens']} tokens after a "
                      f"{raw['prompt_tokens']}-token WikiText-2 prompt; medians of {a.rounds} interleaved rounds.\n\n")
            md.append(table(["runtime", "decode tokens/s", "x fp32 PyTorch"], rows))
    write(a.name, payload, "".join(md) + "\n", a.out)


if __name__ == "__main__":
    main()
