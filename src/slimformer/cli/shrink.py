"""Commands that compress: compress (any recipe), and quantize / prune / export, each of which
builds a short recipe and runs it through `slimformer.compress` like compress does."""
from __future__ import annotations

import sys
from pathlib import Path

from .common import (MODEL_HELP, add_log_with, memory_size, trackers_arg, add_eval_args, count, eval_options, positive, positive_float, run_recipe,
                     task_from_args)


def add_parsers(sub) -> None:
    p = sub.add_parser("compress", help="run a recipe, evaluate before and after, save model + report")
    add_eval_args(p, need_task=False)
    p.add_argument("--recipe", required=True, help="a built-in recipe name (see `slimformer recipes`) or a YAML file")
    p.add_argument("--unlabeled", help="training sentences for recipes that train (encoder-fast, classifier-fast: the "
                   "distill step): a text file (one a line) or task files, several joined with ','")
    p.add_argument("--out", required=True, help="output folder: model, result.json, report.md, report.html. A recipe that trains "
                   "keeps checkpoints in .OUT.slimformer-work beside it: re-run the same command to resume")
    _memory_arg(p)
    add_log_with(p)
    p.set_defaults(run=cmd_compress)

    p = sub.add_parser("quantize", help="quantize a model and save it (reloadable with slimformer.load)")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--scheme", required=True,
                   help="int8 (W8A8 dynamic) | int8-static | w8 | w4 | w4-awq | w4-gptq | w4-gptq-rot | w4-gptq-g64 | "
                   "w4-gptq-g32 | w4-g32-fz | w4-g32-sym; each is a built-in recipe's steps (slimformer recipes: "
                   "int8-dynamic, int8-static, int8-weight-only, int4-rtn, int4-awq, int4-gptq, int4-gptq-rot, "
                   "int4-gptq-g64, int4-gptq-g32, int4-g32-fz, int4-g32-sym). w4-awq: round-to-nearest after activation-aware scaling searched on "
                   "--data, no GPTQ pass; w4-gptq-rot: GPTQ on a Hadamard-rotated model plus coordinate descent on the "
                   "codes, the best int4 group 128 for Llama-family decoders; w4-g32-fz: group 32 with float zero "
                   "points, re-packs a Q4_1 GGUF model exactly")
    p.add_argument("--smoothquant", type=float, metavar="ALPHA", help="apply SmoothQuant with this alpha first (W8A8)")
    p.add_argument("--max-drop", type=float, help="keep the most sensitive layers float until the fidelity drop "
                   "(1 - cosine for embedding models, KL for LMs) is at most this; reports which stayed float. With "
                   "w4-gptq* the search measures round-to-nearest models; the final GPTQ model's own drop, usually "
                   "lower, is reported")
    p.add_argument("--fallback", choices=["float", "int8", "int4-g32"], default="float",
                   help="with --max-drop: what the sensitive layers keep: float (default); inside a 4-bit "
                   "weight-only scheme (w4, w4-awq, w4-gptq*) also int8 (a mixed int4/int8 model) or int4-g32 (still "
                   "4-bit, group 32 with float zero points: mixed group sizes)")
    p.add_argument("--max-kept", type=count, default=16, help="with --max-drop: at most this many layers kept (default 16)")
    p.add_argument("--search-texts", type=positive, help="with --max-drop: texts the sensitivity search measures on "
                   "(default 64; decoder LMs 8, as 128-token chunks: each probe runs the whole model)")
    _calibration_args(p, "calibration text (one text per line; GPTQ and AWQ need it; default: packaged sample)")
    p.add_argument("--out", required=True, help="output folder: the model, result.json, report.md, report.html")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("prune", help="prune a model: sparsity (--method) or structure (--structure), and save it",
                       description="Sparsity (--method magnitude|wanda|sparsegpt) zeroes weights and stores them "
                       "compactly: a smaller file, the same speed on CPU. Structure (--structure heads|ffn|layers) "
                       "removes attention heads, FFN neurons or whole layers: fewer parameters, faster. The folder "
                       "also gets result.json (per-layer details). Pruning during training (movement, gradual "
                       "magnitude, group lasso) is a recipe step before a training step: see recipe encoder-movement.")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"],
                   help="sparsity: magnitude (no data), wanda (|W| x input norm), sparsegpt (reconstructs the layer's "
                   "output; --bits 4/8 also quantizes in the same pass)")
    g.add_argument("--structure", choices=["heads", "ffn", "layers"], help="structured removal")
    p.add_argument("--amount", type=float, help="fraction pruned, in [0, 1) (default 0.5 for sparsity, 0.25 for "
                   "heads/ffn); for --structure layers the fraction of layers (or use --count)")
    p.add_argument("--count", type=positive, help="--structure layers: number of layers to remove")
    p.add_argument("--pattern", default="", help="N:M semi-structured sparsity, e.g. 2:4 (default: unstructured)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="per layer (default) or over the whole model (magnitude, heads, ffn)")
    p.add_argument("--importance", help="--structure heads/ffn: magnitude (default), activation, taylor, random; "
                   "layers: block_influence (default), last")
    p.add_argument("--bits", type=int, choices=[0, 4, 8], default=0, help="--method sparsegpt: also quantize the "
                   "kept weights to int4/int8 (joint mode)")
    _calibration_args(p, "calibration text (one text per line; wanda, sparsegpt and data-based importance need it; "
                      "default: the packaged sample sentences)")
    p.add_argument("--out", required=True, help="output folder: the model, result.json, report.md, report.html")
    p.set_defaults(run=cmd_prune)

    p = sub.add_parser("factorize", help="low-rank factorization or cross-layer weight sharing, and save it",
                       description="Low-rank (--method svd|fwsvd|asvd|svd_llm) replaces each linear layer of the "
                       "Transformer layers by two thinner ones: fewer parameters and less compute. basis_sharing: "
                       "adjacent layers share one low-rank basis per kind of weight. share_layers: adjacent layers "
                       "share one set of weights (a smaller file, the same compute). Recover the quality with a "
                       "distillation step after it: built-in recipes lowrank-svdllm, encoder-lowrank, share-layers.")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--method", required=True,
                   choices=["svd", "fwsvd", "asvd", "svd_llm", "basis_sharing", "share_layers"],
                   help="svd (no data), fwsvd (Fisher-weighted rows), asvd (activation-scaled columns), svd_llm "
                   "(whitened by the calibration Gram matrix; the best one-shot), basis_sharing (bases shared by "
                   "--group adjacent layers), share_layers (--group adjacent layers share their weights)")
    p.add_argument("--ratio", type=positive_float, default=0.8, help="fraction of the targeted layers' parameters "
                   "kept, in (0, 1] (default 0.8: 20%% removed)")
    p.add_argument("--rank", type=count, default=0, help="one fixed rank for every layer instead of --ratio")
    p.add_argument("--allocation", choices=["uniform", "spectrum"], default="uniform",
                   help="uniform: every layer keeps --ratio of its parameters (default); spectrum: a global ranking "
                   "of the layers' (weighted) singular values sets each layer's rank, the total meets --ratio")
    p.add_argument("--group", type=positive, default=2, help="basis_sharing / share_layers: layers per group (default 2)")
    p.add_argument("--embedding-rank", type=positive, help="also factorize the token embedding to this rank (ALBERT; "
                   "models whose embedding is not tied to an LM head)")
    _calibration_args(p, "calibration text (one text per line; fwsvd, asvd, svd_llm and basis_sharing need it; "
                      "default: the packaged sample sentences)")
    p.add_argument("--out", required=True, help="output folder: the model, result.json, report.md, report.html")
    p.set_defaults(run=cmd_factorize)

    p = sub.add_parser("export", help="export to ONNX (optionally int8) for ONNX Runtime, the fastest CPU path, to "
                       "GGUF for llama.cpp, to ExecuTorch (.pte) for phones, or a quantized model to the compressed-tensors format plain transformers "
                       "and vLLM load")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--onnx", action="store_true", help="export to ONNX for ONNX Runtime (a Llama-family LM without "
                   "--quantize: one KV-cache graph, int4/int8 weights as MatMulNBits)")
    g.add_argument("--gguf", action="store_true",
                   help="write a Llama-architecture LM (float, or quantized with groups of 32: w4-g32-fz, w4/w4-gptq at "
                   "group 32, w8 symmetric, int8_dynamic) as one .gguf file for llama.cpp: Q4_1 / Q4_0 / Q8_0 blocks "
                   "holding our codes, scales in float16; --out is the .gguf file (OUT.result.json beside it)")
    g.add_argument("--executorch", action="store_true",
                   help="one .pte for ExecuTorch's XNNPACK backend (phones, small devices): an encoder, or a Llama-family "
                   "LM with its KV cache; float32, or --quantize int8 (int8 dynamic activations x int8 weights) / int4 "
                   "(4-bit weights in groups of 32, for LMs) through torchao; --out is the .pte file (OUT.json and the "
                   "tokenizer files beside it; pip install 'slimformer[executorch]'); run it with slimformer evaluate OUT")
    g.add_argument("--compressed-tensors", action="store_true",
                   help="write a model quantized by slimformer (weight_only with integer zero points and whole groups, "
                   "or int8_dynamic) in the compressed-tensors format, codes and scales carried over exactly; loads with "
                   "AutoModelForCausalLM.from_pretrained (pip install compressed-tensors) and vLLM")
    p.add_argument("--quantize", choices=["int8", "int8-static", "int8-weights", "int8-nncf", "int4"], help="--executorch: "
                   "int8 or int4 (torchao, XNNPACK). --onnx: int8: SmoothQuant-equalized "
                   "dynamic int8 (weights per channel, int8 embedding) tuned for ONNX Runtime on CPU; int8-static: "
                   "activation ranges calibrated on --data, QDQ graph whose int8 tensors flow between ORT's int8 ops; "
                   "int8-weights: int8 weights per channel (slimformer's own codes), activations quantized at run time "
                   "by OpenVINO (pip install 'slimformer[openvino]'); int8-nncf: NNCF's static int8 (SmoothQuant, calibrated "
                   "activations) saved as OpenVINO IR and run by OpenVINO; recipe 'fastest' times them against each other")
    p.add_argument("--no-optimize", action="store_true", help="skip ONNX Runtime's transformer optimizer (default: "
                   "build the graph with and without it and keep the faster on this machine)")
    p.add_argument("--data", help="calibration text for int8 / int8-static (one text per line; default: packaged "
                   "sample)")
    p.add_argument("--accuracy-level", type=int, default=4, choices=range(5), metavar="0-4",
                   help="--onnx of a Llama-family LM: ONNX Runtime MatMulNBits accuracy level: 4 (default) quantizes "
                   "activations to int8 per block for the fastest kernels, 0 keeps them float (exact)")
    p.add_argument("--out", required=True, help="output folder (model.onnx, tokenizer, config, result.json); with "
                   "--gguf, the .gguf file; with --executorch, the .pte file")
    p.set_defaults(run=cmd_export)


def _calibration_args(p, help_text: str) -> None:
    p.add_argument("--data", help=help_text)
    p.add_argument("--calibration-samples", type=positive, default=128, help="texts to calibrate on (default 128)")
    _memory_arg(p)


def _memory_arg(p) -> None:
    p.add_argument("--max-memory", type=memory_size, metavar="SIZE", help="e.g. 4G: refuse up front, with the estimate, "
                   "a run that needs more. A decoder LM folder of safetensors is streamed one layer at a time "
                   "through a single layer-local step (w4, w4-gptq, w8, sparsegpt, wanda): about one layer plus "
                   "the calibration activations in memory, whatever the model's size")


def cmd_compress(a) -> None:
    from .. import load
    from ..report.markdown import render_markdown

    task = task_from_args(a)
    res = run_recipe(load(a.model, stream=True), a.recipe, a.out, task, evaluation=True, evaluate=eval_options(a),
                     unlabeled=a.unlabeled, trackers=trackers_arg(a), max_memory=a.max_memory)
    print(render_markdown(res))
    if task is None:
        print("no --task/--data given: calibrated and measured fidelity on the packaged sample sentences; task "
              "metrics (e.g. STS-B Spearman) need real data via --task/--data", file=sys.stderr)
    print(f"\nwrote {a.out} (model, result.json, report.md; open {Path(a.out) / 'report.html'} in a browser for the "
          "plots)")


def cmd_quantize(a) -> None:
    from .. import load
    from ..quantize import quantize_steps

    steps = quantize_steps(a.scheme, smoothquant=a.smoothquant, max_drop=a.max_drop, fallback=a.fallback,
                           max_kept=a.max_kept, search_texts=a.search_texts)
    res = run_recipe(load(a.model, stream=True), _named(f"quantize {a.scheme}", steps), a.out,
                     calibration_samples=a.calibration_samples, calibration_source=a.data, max_memory=a.max_memory)
    print(f"wrote {a.out} ({', '.join(st.method for st in res.steps)}; result.json lists the steps)")


def cmd_prune(a) -> None:
    from .. import load
    from ..prune import prune_config

    cfg = prune_config(method=a.method, structure=a.structure, amount=a.amount, count=a.count, pattern=a.pattern,
                       scope=a.scope, importance=a.importance, bits=a.bits)
    res = run_recipe(load(a.model, stream=True), _named(f"prune {cfg.method}", [cfg]), a.out,
                     calibration_samples=a.calibration_samples, calibration_source=a.data, max_memory=a.max_memory)
    st = res.steps[-1]
    print(f"wrote {a.out} ({cfg.method}: {st.params_before:,} -> {st.params_after:,} params, "
          f"{st.bytes_before / 1e6:.1f} -> {st.bytes_after / 1e6:.1f} MB; result.json has the per-layer details)")


def cmd_factorize(a) -> None:
    from .. import load
    from ..factorize import factorize_steps

    steps = factorize_steps(a.method, ratio=a.ratio, rank=a.rank, allocation=a.allocation, group=a.group,
                            embedding_rank=a.embedding_rank or 0)
    res = run_recipe(load(a.model), _named(f"factorize {a.method}", steps), a.out,
                     calibration_samples=a.calibration_samples, calibration_source=a.data, max_memory=a.max_memory)
    first, last = res.steps[0], res.steps[-1]
    print(f"wrote {a.out} ({', '.join(st.method for st in res.steps)}: {first.params_before:,} -> "
          f"{last.params_after:,} params, {first.bytes_before / 1e6:.1f} -> {last.bytes_after / 1e6:.1f} MB; "
          "result.json has the per-layer ranks)")


def cmd_export(a) -> None:
    from .. import load
    from ..export.formats import export_step

    model = load(a.model)
    fmt = "gguf" if a.gguf else "compressed-tensors" if a.compressed_tensors else "executorch" if a.executorch else "onnx"
    step = export_step(model, fmt, a.quantize, False if a.no_optimize else "auto", a.accuracy_level)
    said = {"gguf": "for llama.cpp; load it with slimformer.load too",
            "compressed_tensors": "compressed-tensors; load it with transformers' from_pretrained",
            "executorch": f"ExecuTorch, XNNPACK, {a.quantize or 'float32'}; run it with slimformer evaluate {a.out} or "
                          "slimformer.load, on a phone with ExecuTorch's runtime",
            "onnx_lm": f"a KV-cache graph for ONNX Runtime: prefill and decode, int4/int8 weights as MatMulNBits, "
                       f"accuracy level {a.accuracy_level}; run it with slimformer.load(DIR).generate, evaluate or "
                       "onnxruntime-genai",
            "onnx": f"{a.quantize or 'float32'}; run it with slimformer.load(DIR), slimformer.export.load_onnx or "
                    + ("OpenVINO (or onnxruntime, slower)" if a.quantize in ("int8-weights", "int8-nncf") else "onnxruntime")}[step.method]
    res = run_recipe(model, _named(f"export {step.method}", [step]), a.out, calibration_source=a.data)
    st = res.steps[-1]
    if st.details.get("tensor_types"):
        said += f"; tensor types {', '.join(st.details['tensor_types'])}"
    print(f"wrote {a.out} ({said}; {st.bytes_after / 1e6:.1f} MB of weights; result.json beside it)")


def _named(name: str, steps):
    from ..recipes import Recipe

    return Recipe(name=name, steps=list(steps), source="<cli>")
