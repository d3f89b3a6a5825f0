"""Export a SlimModel to an ONNX folder: model.onnx + config + tokenizer (+ pooling) + slimformer_onnx.json.

    folder = export_onnx(sm, "out/m-onnx")                      # float32, CPU-tuned graph
    folder = export_onnx(sm, "out/m-int8", quantize="int8")     # dynamic int8, see below

What `quantize="int8"` does by default (chosen with benchmarks/quantize/onnx_int8_explore.py on
all-MiniLM-L6-v2, 2-core AVX2 x86 without VNNI, ONNX Runtime 1.31; numbers in
benchmarks/results/onnx_int8_explore.json):

1. SmoothQuant (alpha 0.8), exact in float. ORT quantizes activations per tensor at run time,
   so a few outlier channels (LayerNorm outputs up to 15x, GELU outputs up to 16x the median
   channel) waste the 8 bits of all the others; activation rounding, not weight rounding, is
   ~90% of the int8 error. BERT is post-LN: the LayerNorm output is also the residual stream,
   so folding 1/s into the LayerNorm would change the model. Instead the q/k/v and FFN-up
   inputs get one `Mul(x, 1/s)` node each and s goes into the weight rows. Each Mul costs ~1-2%
   of MiniLM's throughput; smoothing the FFN-down input too (`smooth_roles=("qkv", "up",
   "down")`) raises STS-B cosine from 0.9956 to 0.9972 at ~3% less throughput. The
   per-channel statistics come from a calibration pass (packaged sample sentences unless
   `calibration_texts` is given) and are floored at their median over channels: without the
   floor, FFN neurons that stayed quiet on 128 calibration sentences got a small s, were
   amplified on other text and became new outliers (STS-B cosine 0.992 instead of 0.998).
   (`fold_vo=True` also smooths the attention output projection inside the v/o weights.)
2. Dynamic int8 with ORT `quantize_dynamic`: per-output-channel int8 weights (u8s8 kernels),
   per-tensor uint8 activations, int8 (uint8) embedding tables (bytes ~25% of float32).
   q/k/v and the attention output projection use 7-bit weights (reduce_range): on AVX2 without
   VNNI the u8s8 kernel (vpmaddubsw) saturates its int16 pair sums, and those inputs are where
   it showed (uint8 weights avoid it too, but the u8u8 kernels were ~20% slower).
3. GELU as FastGelu (tanh form, `gelu_approximation=True`): ~3% faster, cosine to float32
   unchanged at 4 digits (0.99720 vs 0.99719 on 512 STS-B sentences).
   No fused Attention / SkipLayerNormalization / BiasGelu: on CPU they ran slower than what
   ORT's session builds from the plain graph (SkipLayerNormalization ~10x slower than Add +
   LayerNormalization), and the runtime (`load_onnx`) disables ORT's own SkipLayerNorm fusion
   (recorded in slimformer_onnx.json under "session").
4. The token-embedding table in 4 bits (`embedding_bits=4`, `embedding_block_size=32`): as
   uint8 it is half of MiniLM's int8 file (11.7 of 23.0 MB, 25.3% of the float32 bytes). Each
   row is cut into blocks of 32 values with a float32 scale and a 4-bit zero point each, and ONNX
   Runtime's contrib op com.microsoft.GatherBlockQuantized gathers and dequantizes only the rows
   looked up (export/embedding.py). MiniLM: 18.79 MB (20.7% of float32), STS-B cosine to float32
   0.9969 (uint8 table: 0.9977), Spearman 86.69 (86.61; float32 86.72), throughput at batch
   32 x 128 level with the uint8 table (the lookup alone: 1.5 ms of ~870 ms). Blocks of 16: 20.44 MB,
   cosine 0.9971; 64: 17.97 MB, 0.9966 (benchmarks/results/onnx_int4_embedding.json). Position
   and token-type tables stay uint8; the step is recorded as "embedding_4bit" in
   slimformer_onnx.json (skipped, with the reason, where no plain Gather reads the table, e.g.
   fusion="full" or an odd width). `embedding_bits=8` keeps the uint8 table (the file then
   runs on any ONNX runtime when optimize=False; GatherBlockQuantized is ONNX Runtime only).

`quantize="int8-static"`: SmoothQuant as above, then ONNX Runtime `quantize_static` in QDQ format:
uint8 activations per tensor with ranges calibrated on the same texts (`static_observer`:
"minmax", "percentile" at `static_percentile` (99.999), or "mse", mapped to ORT's Entropy
calibration since ORT has no MSE observer - see STATIC_OBSERVERS), int8 weights per channel
(`per_channel`), 7-bit where `reduce_range` says. ORT's session fuses the QDQ pairs into QLinearMatMul
/ QLinearAdd / QLinearMul, so activations stay int8 between them (MiniLM: see
benchmarks/results/onnx_static.md). The attention mask and masked scores stay float (mask_readers);
the 4-bit token table works as in int8. Recorded as "quantize_static" in slimformer_onnx.json.

`quantize="int8-weights"`: the plain graph with every MatMul weight (and the token-embedding
table) as int8 codes per output channel behind a standard DequantizeLinear: the same codes and
scales as slimformer's PyTorch int8 (`Int8Linear`). No activation quantization is in the graph:
OpenVINO's CPU plugin recognizes int8-compressed weights and quantizes activations itself at run
time (dynamic quantization per group of `act_group_size` input channels; the group must divide a
product's input width, else OpenVINO leaves that product in float: the export warns), so its
products run in int8 (VNNI / AMX) and the rest in bf16 where the CPU has it. Smaller groups stay
closer to float and run slower; 384 (MiniLM's width) was the fastest that divides both of
MiniLM's input widths (384, 1536) in a sweep by hand. `load_onnx` runs such a folder with OpenVINO when `openvino` is installed (`pip install 'slimformer[openvino]'`), else with ONNX
Runtime (correct, but ORT dequantizes the weights and runs float products). MiniLM on an AVX-512
VNNI + BF16 EPYC, 1 thread (benchmarks/results/runtime_minilm.md): 3.38x fp32 PyTorch at cosine
0.9976, alone, where quantize="int8" on ONNX Runtime ran at 5.27x; beside a training job OpenVINO
kept its speed and won (the deploy step times both).

Every choice is an option (`EXPORT_OPTIONS`), e.g. `export_onnx(sm, out, quantize="int8",
optimize=False, smooth_alpha=None, reduce_range=False, embedding_bits=8)` is the plain ORT
per-channel recipe.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..core.errors import ConfigError, SlimformerError

from .onnx_graph import (_calibration_texts, _optimize, _quiet, _token_gather_4bit, _token_table,  # noqa: F401
                         _torch_batches, activation_absmax, fold_vo_smoothing, int8_flow, int8_weight_graph,
                         mask_readers, module_roles, onnx_node_roles, quantize_int8, quantize_int8_static, smooth_graph, weight_matmul_groups)
from .openvino import IR_FILE
from .options import (DEFAULT_OPSET, EXPORT_OPTIONS, FUSION_PROFILES, MODEL_FILE, ONNX_META_FILE,  # noqa: F401
                      QUANTIZE_MODES, ROLES, SESSION_DISABLED_OPTIMIZERS, STATIC_OBSERVERS, SUPPORTED_KINDS,
                      _MAX_BYTES, _options, input_names, require_onnx)

_log = logging.getLogger(__name__)


def export_onnx(sm, out_dir, *, optimize: bool = True, quantize: str | None = None, opset: int | None = None,
                calibration_texts=None, **opts) -> Path:
    """Write `sm` (a SlimModel of kind embedding, classification or causal-lm) as an ONNX folder.

    optimize: True / False / "auto" (build both, keep the faster on this machine); True runs
    ONNX Runtime's transformer optimizer with the `fusion` profile ("cpu": GELU and
    LayerNorm fusions only; "full": also Attention, SkipLayerNorm, EmbedLayerNorm - faster on GPU,
    slower on CPU in our measurements; "none"). quantize: None (float32), "int8" (dynamic) or
    "int8-static" (calibrated activation ranges, QDQ) or "int8-weights" (int8 weights per channel
    in DequantizeLinear, activations quantized by the runtime: for OpenVINO, see below).
    calibration_texts: texts for the int8 activation statistics (default: packaged sample
    sentences). opts: see EXPORT_OPTIONS. Returns the folder path. The folder is written to a
    temporary folder beside `out_dir` and renamed into place; an existing `out_dir` is replaced
    only if it is empty or was written by this function.
    """
    require_onnx()
    o = _options(quantize, opset, opts)
    _check_model(sm)
    from ..models.saving import atomic_folder

    if optimize not in (True, False, "auto"):
        raise ConfigError(f"export_onnx: optimize={optimize!r}; accepted: true, false, 'auto' (build both graphs, "
                          "keep the one that runs faster on this machine)")

    if quantize in ("int8-weights", "int8-nncf"):
        optimize = False  # one graph, the plain one: OpenVINO fuses it itself; ORT's contrib ops are not for it

    def write(tmp: Path) -> None:
        if optimize == "auto":
            meta = _build_fastest(sm, tmp, quantize, calibration_texts, o)
        else:
            meta = _build(sm, tmp, optimize, quantize, calibration_texts, o)
        (tmp / ONNX_META_FILE).write_text(json.dumps(meta, indent=2, default=str))

    return atomic_folder(out_dir, write, markers=(ONNX_META_FILE,))  # never replaces a saved model


def _build_fastest(sm, folder: Path, quantize, calibration_texts, o: dict) -> dict:
    """optimize="auto": build the graph with and without ONNX Runtime's transformer optimizer and
    keep the faster on this machine. Measured: the optimizer's graph was ~3% faster on a 2-core
    AVX2 CPU without VNNI, ~12% slower on a Xeon with AVX-512 VNNI and AMX (MiniLM int8)."""
    from .runtime import OnnxSlimModel

    built, speed = {}, {}
    for opt in (True, False):
        sub = folder / f".auto-{int(opt)}"
        sub.mkdir()
        meta = _build(sm, sub, opt, quantize, calibration_texts, o)
        (sub / ONNX_META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        built[opt] = (sub, meta)
    sessions = {opt: OnnxSlimModel(sub, spin=False) for opt, (sub, _) in built.items()}
    speed = _interleaved_seconds(sm, sessions)
    best = min(speed, key=speed.get)
    del sessions
    sub, meta = built[best]
    for f in sub.iterdir():
        if f.name != ONNX_META_FILE:
            shutil.move(str(f), folder / f.name)
    for other, _ in built.values():
        shutil.rmtree(other, ignore_errors=True)
    meta["optimize"] = best
    meta["optimize_auto"] = {"chosen": "optimized" if best else "plain",
                             "seconds_per_batch": {("optimized" if k else "plain"): v for k, v in speed.items()},
                             "batch": "8 x 128 tokens, median of 7 interleaved runs"}
    meta["bytes"] = (folder / MODEL_FILE).stat().st_size
    return meta


def _interleaved_seconds(sm, sessions: dict, rounds: int = 7) -> dict:
    from ..data import sample_sentences
    from ..evaluate.efficiency import interleaved_seconds, make_inputs

    return interleaved_seconds(sessions, make_inputs(sm, sample_sentences(), 8, 128), rounds)


# ---------------------------------------------------------------------------------------------
# validation


def _check_model(sm) -> None:
    from ..models.wrapper import SlimModel

    if not isinstance(sm, SlimModel):
        raise SlimformerError(f"export_onnx needs a SlimModel (from slimformer.load), got {type(sm).__name__}")
    if sm.kind not in SUPPORTED_KINDS:
        raise SlimformerError(f"export_onnx: kind {sm.kind!r} is not supported; accepted: "
                              f"{', '.join(SUPPORTED_KINDS)}")
    if sm.tokenizer is None:
        raise SlimformerError("export_onnx: the model has no tokenizer; the ONNX folder needs one")
    nbytes = sum(p.numel() * p.element_size() for p in sm.model.parameters())
    if nbytes > _MAX_BYTES:
        raise SlimformerError(f"export_onnx: the model has {nbytes / 1e9:.1f} GB of parameters; models over "
                              "2 GB (ONNX external data) are not supported yet")


# ---------------------------------------------------------------------------------------------
# the pipeline


def _build(sm, folder: Path, optimize: bool, quantize, calibration_texts, o: dict) -> dict:
    work = folder / ".work"
    work.mkdir()
    steps: list[dict] = []
    model = sm.model
    int8 = quantize in ("int8", "int8-static")
    static = quantize == "int8-static"
    smooth = int8 and o["smooth_alpha"] is not None
    texts = _calibration_texts(calibration_texts, o["calibration_samples"]) if smooth or static else None
    feeds = None
    if smooth and o["fold_vo"]:
        model = copy.deepcopy(model)  # never change the caller's weights
        n = fold_vo_smoothing(model, _torch_batches(sm, texts, o), o["smooth_alpha"], o["smooth_floor"])
        steps.append({"step": "fold_vo_smoothing", "attention_blocks": n, "alpha": o["smooth_alpha"]})
    names = input_names(sm)
    outputs = [_OUTPUT[sm.kind]]
    path = work / "plain.onnx"
    _export_torch(model, sm.kind, names, outputs, path, o)
    steps.append({"step": "export", "exporter": o["exporter"], "opset": o["opset"]})
    roles = module_roles(model)
    if optimize:
        path, info = _optimize(path, model, o["fusion"], work, o["gelu_approximation"])
        steps.append({"step": "optimize", **info})
    if int8:
        import onnx

        proto = onnx.load(str(path))
        node_roles = onnx_node_roles(proto, roles)
        if smooth or static:
            feeds = [{k: v.numpy() for k, v in b.items()} for b in _torch_batches(sm, texts, o)]
        if smooth:
            info = smooth_graph(proto, feeds, o["smooth_alpha"], o["smooth_floor"],
                                select=lambda nodes: all(node_roles.get(n.name) in o["smooth_roles"] for n in nodes))
            steps.append({"step": "smooth_graph", "alpha": o["smooth_alpha"], **info})
        gather, why = _token_gather_4bit(model, proto, o)
        keep = [gather] if gather else []
        if static:
            info = quantize_int8_static(proto, folder / MODEL_FILE, node_roles, feeds, o, work, keep_float=keep)
            steps.append({"step": "quantize_static", "calibration_texts": len(texts), **info})
        else:
            info = quantize_int8(proto, folder / MODEL_FILE, node_roles, o, work, keep_float=keep)
            steps.append({"step": "quantize_dynamic", **info})
        if gather:
            from .embedding import replace_token_gather

            q = onnx.load(str(folder / MODEL_FILE))
            info = replace_token_gather(q, gather, o["embedding_block_size"])
            onnx.save(q, str(folder / MODEL_FILE))
            steps.append({"step": "embedding_4bit", "applied": True, **info})
        elif why:
            steps.append({"step": "embedding_4bit", "applied": False, "why": why})
    elif quantize == "int8-weights":
        import onnx

        proto = onnx.load(str(path))
        table = _token_table(model) if o["quantize_embeddings"] else None
        info = int8_weight_graph(proto, table)
        onnx.save(proto, str(folder / MODEL_FILE))
        g = o["act_group_size"]
        odd = [k for k in info["input_widths"] if g and k % g]
        if odd:  # OpenVINO then leaves those products in float
            info["warning"] = (f"act_group_size {g} does not divide the input width(s) {odd}: OpenVINO runs those "
                               "products in float (pick a group size dividing every width)")
            _log.warning(info["warning"])
        steps.append({"step": "int8_weights", **info})
    elif quantize == "int8-nncf":
        from .openvino import nncf_int8

        texts = _calibration_texts(calibration_texts, o["calibration_samples"])
        feeds = [{k: v.numpy() for k, v in b.items()} for b in _torch_batches(sm, texts, o, batch_size=8)]
        steps.append({"step": "nncf_quantize", "calibration_texts": len(texts), **nncf_int8(path, folder, feeds)})
    else:
        shutil.move(str(path), folder / MODEL_FILE)
    shutil.rmtree(work)
    _write_side_files(sm, model, folder)
    return _meta(sm, names, outputs, optimize, quantize, o, steps, folder)


_OUTPUT = {"embedding": "last_hidden_state", "classification": "logits", "causal-lm": "logits"}


class _ExportWrapper(nn.Module):
    """Positional inputs -> one output tensor, so the graph has named inputs and outputs."""

    def __init__(self, model: nn.Module, kind: str, names: list[str]):
        super().__init__()
        self.m, self.kind, self.names = model, kind, names

    def forward(self, *args):
        from ..models.wrapper import _is_bare

        kw = dict(zip(self.names, args))
        if self.kind == "causal-lm":
            return self.m(**kw, use_cache=False, return_dict=True).logits
        if self.kind == "classification":
            return self.m(**kw, return_dict=True).logits
        if _is_bare(self.m):
            return self.m(**kw, return_dict=True).last_hidden_state
        return self.m(**kw, output_hidden_states=True, return_dict=True).hidden_states[-1]


@contextlib.contextmanager
def _eager_attention(model: nn.Module):
    """Plain matmul/softmax attention while tracing: the pattern ORT's fusions and our passes know."""
    cfg = getattr(model, "config", None)
    prev = getattr(cfg, "_attn_implementation", None)
    changed = False
    if prev not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            changed = True
        except (ValueError, ImportError):  # some models have no eager path; export what there is
            pass
    try:
        yield
    finally:
        if changed:
            model.set_attn_implementation(prev)


def _export_torch(model: nn.Module, kind: str, names: list[str], outputs: list[str], path: Path, o: dict) -> None:
    cfg = model.config
    vocab = int(getattr(cfg, "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 8), generator=g)
    sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    sample["attention_mask"][1, 6:] = 0  # a padded row, so masking is traced as data, not constant
    args = tuple(sample[n] for n in names)
    wrap = _ExportWrapper(model, kind, names).eval()
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[outputs[0]] = {0: "batch", 1: "sequence"} if kind != "classification" else {0: "batch"}
    was_training = model.training
    model.eval()
    try:
        with _eager_attention(model), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if o["exporter"] == "torchscript":
                torch.onnx.export(wrap, args, str(path), dynamo=False, input_names=names, output_names=outputs,
                                  dynamic_axes=axes, opset_version=o["opset"], do_constant_folding=True)
            else:
                b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
                torch.onnx.export(wrap, args, str(path), dynamo=True, input_names=names, output_names=outputs,
                                  dynamic_shapes=tuple({0: b, 1: s} for _ in names), opset_version=o["opset"],
                                  external_data=False)
    except Exception as e:  # the exporters raise many types
        other = "dynamo" if o["exporter"] == "torchscript" else "torchscript"
        raise SlimformerError(f"export_onnx: the {o['exporter']} exporter failed for {type(model).__name__} "
                              f"({type(e).__name__}: {str(e)[:300]}); try exporter={other!r}") from e
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# side files


def _write_side_files(sm, model: nn.Module, folder: Path) -> None:
    from ..models.saving import _write_pooling

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(folder)
    sm.tokenizer.save_pretrained(folder)
    if sm.kind == "embedding" and sm.pooling is not None:
        _write_pooling(sm, folder)


def _meta(sm, names, outputs, optimize, quantize, o, steps, folder: Path) -> dict:
    from dataclasses import asdict

    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items()} if quantize else {
        k: o[k] for k in ("fusion", "exporter", "opset")}
    seq_out = {0: "batch"} if sm.kind == "classification" else {0: "batch", 1: "sequence"}
    return {
        "format": "slimformer-onnx",
        "format_version": 1,
        "slimformer_version": __version__,
        "kind": sm.kind,
        "source": sm.source,
        "model_type": getattr(sm.model.config, "model_type", None),
        "model_file": IR_FILE if quantize == "int8-nncf" else MODEL_FILE,
        "bytes": ((folder / "model.bin") if quantize == "int8-nncf" else (folder / MODEL_FILE)).stat().st_size,
        "inputs": [{"name": n, "dtype": "int64", "axes": {0: "batch", 1: "sequence"}} for n in names],
        "outputs": [{"name": outputs[0], "dtype": "float32", "axes": seq_out}],
        "pooling": asdict(sm.pooling) if sm.pooling is not None else None,
        "optimize": bool(optimize),
        "quantize": quantize,
        "options": options,
        "session": {"disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS)},
        "runtime": "openvino" if quantize in ("int8-weights", "int8-nncf") else "onnxruntime",
        **({"openvino": {"dynamic_quantization_group_size": o["act_group_size"]}} if quantize == "int8-weights" else {}),
        "steps": steps,
        "model_meta": sm.meta,
    }
