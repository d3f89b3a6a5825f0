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

Every choice is an option (`EXPORT_OPTIONS`), e.g. `export_onnx(sm, out, quantize="int8",
optimize=False, smooth_alpha=None, reduce_range=False, embedding_bits=8)` is the plain ORT
per-channel recipe.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..core.errors import ConfigError, SlimformerError

ONNX_META_FILE = "slimformer_onnx.json"
MODEL_FILE = "model.onnx"
SUPPORTED_KINDS = ("embedding", "classification", "causal-lm")
QUANTIZE_MODES = ("int8", "int8-static")
# our observer names (slimformer.quantize) -> ONNX Runtime CalibrationMethod for int8-static. ORT has
# no MSE calibrator; Entropy (TensorRT's KL-divergence threshold search over a histogram) is the
# closest: like an MSE search it picks the clipping range that best trades clipping error against
# rounding error on the observed distribution. Distribution only records mean/std (for float8 scales).
STATIC_OBSERVERS = {"minmax": "MinMax", "percentile": "Percentile", "mse": "Entropy"}
ROLES = ("qkv", "o", "up", "down")
DEFAULT_OPSET = 17
FUSION_PROFILES = ("cpu", "full", "none")
# ORT graph optimizers that made the exported graphs slower on CPU (see module docstring)
SESSION_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
_MAX_BYTES = 1_900_000_000  # single-file ONNX protobuf limit is 2 GB

# option -> default. Documented in the module docstring and README; validated in _options().
EXPORT_OPTIONS: dict = {
    "per_channel": True,            # int8: one weight scale per output channel
    "weight_type": "int8",          # "int8" (u8s8 kernels, fastest on x86) | "uint8" (u8u8, no saturation, slower)
    "reduce_range": ("qkv", "o"),   # 7-bit weights for these roles; True: all MatMuls, False/(): none
    "smooth_alpha": 0.8,            # SmoothQuant migration strength in [0, 1]; None: off
    "smooth_roles": ("qkv", "up"),  # MatMul inputs that get an exact Mul(x, 1/s) node (+"down": most
                                    # faithful, ~2% slower)
    "smooth_floor": 0.5,            # per-channel max|x| is floored at this quantile over channels: only
                                    # outlier channels are damped, rarely-seen ones never amplified
    "fold_vo": False,               # SmoothQuant of the attention output projection folded into v/o weights
                                    # (exact, free; no gain once o has reduce_range)
    "quantize_embeddings": True,    # int8 Gather for embedding tables (most of the bytes of a small model)
    "embedding_bits": 4,            # token-embedding table: 4 (block-quantized, GatherBlockQuantized) | 8 (uint8)
    "embedding_block_size": 32,     # values per 4-bit block (own scale and zero point): 16 | 32 | 64 | 128
    "calibration_samples": 128,     # texts used for the activation statistics
    "calibration_max_length": 128,  # tokens per calibration text
    "fusion": "cpu",                # ORT transformer optimizer profile when optimize=True
    "gelu_approximation": True,     # optimize=True: exact GELU -> FastGelu (tanh form, ~1e-3 abs error;
                                    # ~3% faster on MiniLM, cosine to float32 unchanged at 4 digits)
    "exporter": "torchscript",      # "torchscript" (keeps module names: roles, fusions) | "dynamo"
    "static_observer": "minmax",    # int8-static activation ranges: "minmax" | "percentile" | "mse" (ORT Entropy)
    "static_percentile": 99.999,    # int8-static with static_observer="percentile": the percentile kept, in (0, 100]
}

_log = logging.getLogger(__name__)


def export_onnx(sm, out_dir, *, optimize: bool = True, quantize: str | None = None, opset: int | None = None,
                calibration_texts=None, **opts) -> Path:
    """Write `sm` (a SlimModel of kind embedding, classification or causal-lm) as an ONNX folder.

    optimize: run ONNX Runtime's transformer optimizer with the `fusion` profile ("cpu": GELU and
    LayerNorm fusions only; "full": also Attention, SkipLayerNorm, EmbedLayerNorm - faster on GPU,
    slower on CPU in our measurements; "none"). quantize: None (float32), "int8" (dynamic) or
    "int8-static" (calibrated activation ranges, QDQ).
    calibration_texts: texts for the int8 activation statistics (default: packaged sample
    sentences). opts: see EXPORT_OPTIONS. Returns the folder path. The folder is written to a
    temporary folder beside `out_dir` and renamed into place; an existing `out_dir` is replaced
    only if it is empty or was written by this function.
    """
    require_onnx()
    o = _options(quantize, opset, opts)
    _check_model(sm)
    from ..models.saving import atomic_folder

    def write(tmp: Path) -> None:
        meta = _build(sm, tmp, optimize, quantize, calibration_texts, o)
        (tmp / ONNX_META_FILE).write_text(json.dumps(meta, indent=2, default=str))

    return atomic_folder(out_dir, write, markers=(ONNX_META_FILE,))  # never replaces a saved model


# ---------------------------------------------------------------------------------------------
# validation


def require_onnx() -> None:
    """A clear error when the optional ONNX packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise SlimformerError(f"ONNX export needs {' and '.join(missing)}: pip install 'slimformer[onnx]'")


def _options(quantize, opset, opts: dict) -> dict:
    unknown = sorted(set(opts) - set(EXPORT_OPTIONS))
    if unknown:
        raise ConfigError(f"export_onnx: unknown option(s) {', '.join(unknown)}; accepted: "
                          f"{', '.join(EXPORT_OPTIONS)}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"export_onnx: quantize={quantize!r} is not supported; accepted: None, "
                          f"{', '.join(repr(q) for q in QUANTIZE_MODES)}")
    o = {**EXPORT_OPTIONS, **opts}
    o["opset"] = DEFAULT_OPSET if opset is None else opset
    if not isinstance(o["opset"], int) or not 14 <= o["opset"] <= 21:
        raise ConfigError(f"export_onnx: opset must be an integer in 14..21, got {o['opset']!r}")
    if o["weight_type"] not in ("int8", "uint8"):
        raise ConfigError(f"weight_type: expected 'int8' or 'uint8', got {o['weight_type']!r}")
    if o["fusion"] not in FUSION_PROFILES:
        raise ConfigError(f"fusion: expected one of {', '.join(FUSION_PROFILES)}, got {o['fusion']!r}")
    if o["exporter"] not in ("torchscript", "dynamo"):
        raise ConfigError(f"exporter: expected 'torchscript' or 'dynamo', got {o['exporter']!r}")
    a = o["smooth_alpha"]
    fl = o["smooth_floor"]
    if fl is not None and (not isinstance(fl, (int, float)) or not 0.0 <= fl <= 1.0):
        raise ConfigError(f"smooth_floor: expected a quantile in [0, 1] or None, got {fl!r}")
    if a is not None and (not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
        raise ConfigError(f"smooth_alpha: expected a number in [0, 1] or None, got {a!r}")
    rr = o["reduce_range"]
    o["reduce_range"] = tuple(ROLES) + ("other",) if rr is True else () if rr in (False, None) else rr
    for key in ("reduce_range", "smooth_roles"):
        o[key] = (o[key],) if isinstance(o[key], str) else tuple(o[key])
        bad = [r for r in o[key] if r not in ROLES + ("other",)]
        if bad:
            raise ConfigError(f"{key}: unknown role(s) {bad}; accepted: {', '.join(ROLES)}, other")
    from .embedding import EMBEDDING_BITS, EMBEDDING_BLOCK_SIZES

    for key, accepted in (("embedding_bits", EMBEDDING_BITS), ("embedding_block_size", EMBEDDING_BLOCK_SIZES)):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v not in accepted:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, accepted))}, got {v!r}")
    if o["static_observer"] not in STATIC_OBSERVERS:
        raise ConfigError(f"static_observer: expected one of {', '.join(STATIC_OBSERVERS)}, got "
                          f"{o['static_observer']!r}")
    pct = o["static_percentile"]
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0.0 < pct <= 100.0:
        raise ConfigError(f"static_percentile: expected a number in (0, 100], got {pct!r}")
    n = o["calibration_samples"]
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration_samples: expected an integer >= 1, got {n!r}")
    return o


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
    int8 = quantize in QUANTIZE_MODES
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
    else:
        shutil.move(str(path), folder / MODEL_FILE)
    shutil.rmtree(work)
    _write_side_files(sm, model, folder)
    return _meta(sm, names, outputs, optimize, quantize, o, steps, folder)


_OUTPUT = {"embedding": "last_hidden_state", "classification": "logits", "causal-lm": "logits"}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def input_names(sm) -> list[str]:
    """The ONNX inputs: what the tokenizer gives that the model's forward accepts."""
    import inspect

    enc = sm.tokenizer(["hello world", "a second sentence"], padding=True)
    params = set(inspect.signature(sm.model.forward).parameters)
    names = [k for k in _INPUTS if k in enc and k in params]
    if sm.kind == "causal-lm":
        names = [k for k in names if k != "token_type_ids"]
    if "input_ids" not in names:
        raise SlimformerError(f"export_onnx: the tokenizer gives no input_ids the model accepts ({sorted(enc)})")
    return names


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
# ORT transformer optimizer

def _optimize(path: Path, model: nn.Module, profile: str, work: Path, gelu_approximation: bool = False) -> tuple[Path, dict]:
    from ..adapters import get_adapter

    cfg = model.config
    adapter = get_adapter(model)
    mt = adapter.ort_model_type
    if profile == "none" or mt is None:
        why = "fusion='none'" if profile == "none" else f"no ORT fusion profile for model_type {cfg.model_type!r}"
        return path, {"applied": False, "why": why}
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fo = FusionOptions(mt)
    if profile == "cpu":
        # Measured slower on CPU (ORT 1.31, AVX2) than what ORT's session builds from the unfused
        # graph: Attention/MultiHeadAttention, SkipLayerNormalization (~10x slower than Add +
        # LayerNormalization), EmbedLayerNormalization (and it quantizes to a per-tensor table),
        # BiasGelu (it keeps the bias from fusing into the int8 MatMulIntegerToFloat).
        for k in ("enable_attention", "enable_skip_layer_norm", "enable_bias_skip_layer_norm",
                  "enable_embed_layer_norm", "enable_bias_gelu", "enable_qordered_matmul"):
            setattr(fo, k, False)
    fo.enable_gelu_approximation = bool(gelu_approximation)
    heads, hidden = adapter.heads_and_hidden(model)
    with _quiet():
        om = optimize_model(str(path), model_type=mt, num_heads=int(heads), hidden_size=int(hidden),
                            optimization_options=fo, opt_level=0)
    fused = {k: v for k, v in om.get_fused_operator_statistics().items() if v}
    out = work / "optimized.onnx"
    om.save_model_to_file(str(out))
    return out, {"applied": True, "profile": profile, "model_type": mt, "fused": fused}


# ---------------------------------------------------------------------------------------------
# roles: which MatMul is q/k/v, o, FFN up or down (names from the adapters, never matched here)


def module_roles(model: nn.Module) -> dict[str, str]:
    """{qualified module name: role} for the linear layers an adapter knows; {} if none does."""
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError

    try:
        adapter = get_adapter(model)
        layers = adapter.layers(model)
    except UnsupportedArchitectureError:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    roles: dict[str, str] = {}
    for li in layers:
        for a in (li.attention, li.cross_attention):
            if a is None:
                continue
            for m in (a.q, a.k, a.v, a.qkv):
                if m is not None:
                    roles[names[id(m)]] = "qkv"
            roles[names[id(a.o)]] = "o"
        for m in (li.ffn.up, li.ffn.gate):
            if m is not None:
                roles[names[id(m)]] = "up"
        roles[names[id(li.ffn.down)]] = "down"
    return roles


def onnx_node_roles(proto, roles: dict[str, str]) -> dict[str, str]:
    """{ONNX MatMul node name: role}. The TorchScript exporter names nodes by module scope
    (`/m/encoder/layer.0/attention/self/query/MatMul`, `m` being the export wrapper); where a
    fusion renamed the node, an untransposed weight still carries the module name
    (`m.transformer.h.0.attn.c_attn.weight`, GPT-2's Conv1D)."""
    out = {}
    for n in proto.graph.node:
        if n.op_type != "MatMul":
            continue
        scope = n.name.rsplit("/", 1)[0]  # ModuleList children appear as "layer.0": compare dotted
        module = scope[len("/m/"):].replace("/", ".") if scope.startswith("/m/") else ""
        w = n.input[1] if len(n.input) > 1 else ""
        if module not in roles and w.startswith("m.") and w.endswith(".weight"):
            module = w[len("m."):-len(".weight")]
        out[n.name] = roles.get(module, "other")
    return out


# ---------------------------------------------------------------------------------------------
# calibration


def _calibration_texts(texts, n: int) -> list[str]:
    from ..data.calibration import calibration_texts, sample_sentences

    return calibration_texts(sample_sentences() if texts is None else texts, n=n)


def _torch_batches(sm, texts: list[str], o: dict, batch_size: int = 32) -> list[dict]:
    names = input_names(sm)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = sm.tokenize(texts[i : i + batch_size], o["calibration_max_length"])
        out.append({k: enc[k] for k in names})
    return out


# ---------------------------------------------------------------------------------------------
# SmoothQuant: exact in float


@torch.no_grad()
def fold_vo_smoothing(model: nn.Module, batches: list[dict], alpha: float, floor: float | None = 0.5) -> int:
    """Per attention block: o input channel j gets s_j from calibration statistics; v's output
    row j (and bias) is divided by s_j, o's input column j multiplied by s_j. Exact, since the
    attention mix is linear per channel. Skipped where v/o are not plain Linear layers or k/v
    heads are shared (GQA). Returns the number of blocks changed."""
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError
    from ..quantize.smoothquant import floor_absmax, smoothing_scales

    try:
        layers = get_adapter(model).layers(model)
    except UnsupportedArchitectureError:
        return 0
    blocks = [a for li in layers for a in (li.attention, li.cross_attention)
              if a is not None and a.kind == "self" and isinstance(a.v, nn.Linear) and isinstance(a.o, nn.Linear)
              and a.num_kv_heads == a.num_heads and a.v.out_features == a.o.in_features]
    if not blocks:
        return 0
    amax: dict[int, torch.Tensor] = {}

    def hook(mod, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        amax[id(mod)] = torch.maximum(amax[id(mod)], x) if id(mod) in amax else x

    handles = [a.o.register_forward_pre_hook(hook) for a in blocks]
    try:
        model.eval()
        for b in batches:
            model(**b)
    finally:
        for h in handles:
            h.remove()
    for a in blocks:
        s = smoothing_scales(floor_absmax(amax[id(a.o)], floor), a.o.weight.abs().amax(0), alpha)
        a.v.weight.div_(s[:, None].to(a.v.weight.dtype))
        if a.v.bias is not None:
            a.v.bias.div_(s.to(a.v.bias.dtype))
        a.o.weight.mul_(s[None, :].to(a.o.weight.dtype))
    return len(blocks)


def weight_matmul_groups(proto) -> dict[str, list]:
    """{activation tensor: [MatMul nodes reading it with a 2-D constant weight used only there]}."""
    inits = {i.name: i for i in proto.graph.initializer}
    uses: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list] = {}
    for n in proto.graph.node:
        if (n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits and n.input[0] not in inits
                and len(inits[n.input[1]].dims) == 2 and uses[n.input[1]] == 1):
            groups.setdefault(n.input[0], []).append(n)
    return groups


def activation_absmax(proto, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel (last dim) max |x| of graph tensors `names` over the calibration feeds."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ins = [i.name for i in sess.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for f in feeds:
        for n, x in zip(names, sess.run(names, {k: f[k] for k in ins})):
            a = np.abs(x).reshape(-1, x.shape[-1]).max(0)
            amax[n] = np.maximum(amax[n], a) if n in amax else a
    return amax


def smooth_graph(proto, feeds: list[dict], alpha: float, floor: float | None = 0.5, select=None) -> dict:
    """SmoothQuant on the ONNX graph, in place: for each activation x read by weight MatMuls
    (chosen by `select(nodes)`), insert `Mul(x, 1/s)` feeding them and scale the weight rows by s.
    s_j = max|x_j|^alpha / max|W_j|^(1-alpha). Exact in float; int8 then sees x/s."""
    from onnx import helper, numpy_helper

    from ..quantize.smoothquant import floor_absmax, smoothing_scales

    groups = {x: ns for x, ns in weight_matmul_groups(proto).items() if select is None or select(ns)}
    if not groups:
        return {"groups": 0}
    amax = activation_absmax(proto, list(groups), feeds)
    inits = {i.name: i for i in proto.graph.initializer}
    inserts = []
    for x, nodes in groups.items():
        ws = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]  # (in, out)
        wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
        act = floor_absmax(torch.from_numpy(amax[x].astype(np.float32)), floor)
        s = smoothing_scales(act, torch.from_numpy(wmax), alpha).numpy()
        for n, w in zip(nodes, ws):
            inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{x}_smooth_inv")
        proto.graph.initializer.append(inv)
        y = f"{x}_smoothed"
        inserts.append((nodes[0], helper.make_node("Mul", [x, inv.name], [y], name=f"{x}_smooth")))
        for n in nodes:
            n.input[0] = y
    for first, mul in inserts:  # right before the first reader: keeps the graph topologically sorted
        idx = next(i for i, n in enumerate(proto.graph.node) if n is first)
        proto.graph.node.insert(idx, mul)
    return {"groups": len(groups), "matmuls": sum(len(v) for v in groups.values())}


# ---------------------------------------------------------------------------------------------
# int8


@contextlib.contextmanager
def _quiet():
    """ORT's tools log advice at WARNING on the root logger; keep the user's console clean."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(prev)


def _token_gather_4bit(model: nn.Module, proto, o: dict) -> tuple[str | None, str | None]:
    """(name of the Gather of the token-embedding table to store in 4 bits, None) when
    embedding_bits=4 applies; (None, why not) when it was asked for but cannot; (None, None)."""
    if o["embedding_bits"] != 4:
        return None, None
    if not o["quantize_embeddings"]:
        return None, "quantize_embeddings=False: embedding tables stay float32"
    from .embedding import find_token_gather

    table = _token_table(model)
    if table is None:
        return None, "no token-embedding table found (adapter / get_input_embeddings)"
    if table.shape[1] % 2:
        return None, f"embedding width {table.shape[1]} is odd; 4-bit rows are packed two values per byte"
    node, why = find_token_gather(proto, table)
    return (node.name, None) if node is not None else (None, why)


def _token_table(model: nn.Module) -> np.ndarray | None:
    from ..adapters import get_adapter
    from ..core.errors import UnsupportedArchitectureError

    try:
        emb = get_adapter(model).embeddings(model)
    except (UnsupportedArchitectureError, NotImplementedError, AttributeError):
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if get is not None else None
    w = getattr(emb, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    return w.detach().float().cpu().numpy()


def quantize_int8(proto, out_path: Path, node_roles: dict[str, str], o: dict, work: Path,
                  keep_float: list[str] = ()) -> dict:
    """Dynamic int8 with onnxruntime.quantization.quantize_dynamic. MatMuls whose role is in
    o["reduce_range"] get 7-bit weights (a first pass limited to them), the rest full 8-bit.
    Nodes in `keep_float` are left as they are (the token Gather that embedding_bits=4 replaces)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wt = QuantType.QInt8 if o["weight_type"] == "int8" else QuantType.QUInt8
    if _has_contrib_ops(proto):  # fused ops: ONNX shape inference cannot type their outputs
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    matmuls = [n.name for n in proto.graph.node if n.op_type == "MatMul"]
    rr = [n for n in matmuls if node_roles.get(n, "other") in o["reduce_range"]]
    exclude = list(keep_float)
    if not o["quantize_embeddings"]:
        exclude = [n.name for n in proto.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")]
    common = dict(per_channel=o["per_channel"], weight_type=wt, extra_options={"MatMulConstBOnly": True})
    src = work / "to_quantize.onnx"
    onnx.save(proto, str(src))
    with _quiet():
        if rr and len(rr) < len(matmuls):
            mid = work / "quantized_rr.onnx"
            quantize_dynamic(src, mid, reduce_range=True, nodes_to_quantize=rr, op_types_to_quantize=["MatMul"],
                             **common)
            quantize_dynamic(mid, out_path, reduce_range=False, nodes_to_exclude=rr + exclude, **common)
        else:
            quantize_dynamic(src, out_path, reduce_range=bool(rr), nodes_to_exclude=exclude, **common)
    q = onnx.load(str(out_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QEmbedLayerNormalization",
                         "DequantizeLinear", "MatMul"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"per_channel": o["per_channel"], "weight_type": o["weight_type"], "reduce_range_matmuls": len(rr),
            "quantize_embeddings": o["quantize_embeddings"], "ops": counts}


# op types int8-static quantizes (QDQ pairs around them). The ones ONNX Runtime's CPU session
# turns into int8 kernels or passes int8 through: MatMul (QLinearMatMul, or MatMulIntegerToFloat
# where the output stays float), Add/Mul (QLinearAdd/QLinearMul: biases, the smoothing Mul),
# Reshape/Transpose/Squeeze/Unsqueeze (Q/DQ dropped: int8 moves through), Gather (int8 tables).
# LayerNormalization, Softmax, Gelu, Div and the residual stream stay float.
STATIC_OP_TYPES = ("MatMul", "Gather", "Add", "Mul", "Reshape", "Transpose", "Squeeze", "Unsqueeze")


class _FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict], input_names: list[str]):
        self.feeds = [{k: np.ascontiguousarray(f[k]) for k in input_names if k in f} for f in feeds]
        self.i, self.end = 0, len(self.feeds)

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):
        self.i, self.end = start_index, min(end_index, len(self.feeds))


def quantize_int8_static(proto, out_path: Path, node_roles: dict[str, str], feeds: list[dict], o: dict, work: Path,
                         keep_float: list[str] = ()) -> dict:
    """Static int8 with onnxruntime.quantization.quantize_static, QDQ format: activation ranges
    from the calibration feeds (observer `o["static_observer"]`, see STATIC_OBSERVERS), uint8
    activations per tensor (asymmetric), int8/uint8 weights per output channel when
    o["per_channel"], 7-bit weights for MatMuls whose role is in o["reduce_range"]. ONNX Runtime's
    session fuses DQ -> op -> Q into int8 kernels, so int8 flows between consecutive quantized ops
    (count them with `int8_flow(optimized_model)`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    wt = QuantType.QInt8 if o["weight_type"] == "int8" else QuantType.QUInt8
    if _has_contrib_ops(proto):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        proto = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    inits = {i.name for i in proto.graph.initializer}
    rr_weights = sorted({n.input[1] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                         and node_roles.get(n.name, "other") in o["reduce_range"]})
    readers, mask = mask_readers(proto)
    exclude = list(keep_float) + readers
    if not o["quantize_embeddings"]:
        exclude += [n.name for n in proto.graph.node if n.op_type in ("Gather", "EmbedLayerNormalization")]
    src = work / "to_quantize.onnx"
    onnx.save(proto, str(src))
    method = getattr(CalibrationMethod, STATIC_OBSERVERS[o["static_observer"]])
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True,
             "TensorQuantOverrides": {w: [{"reduce_range": True}] for w in rr_weights}}
    names = [i.name for i in proto.graph.input]
    cache = work / "calibration.json"
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
        _calibrate(src, work, method, feeds, names, skip=_outputs(proto, readers) | mask, percentile=o["static_percentile"],
                   cache=cache)
        quantize_static(str(src), str(out_path), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_OP_TYPES), per_channel=o["per_channel"],
                        activation_type=QuantType.QUInt8, weight_type=wt, nodes_to_exclude=exclude,
                        calibrate_method=method, extra_options=extra, calibration_cache_path=str(cache))
    q = onnx.load(str(out_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gather"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"format": "QDQ", "observer": o["static_observer"], "ort_calibration_method": method.name,
            "percentile": o["static_percentile"] if o["static_observer"] == "percentile" else None,
            "per_channel": o["per_channel"], "weight_type": o["weight_type"], "activation_type": "uint8",
            "reduce_range_weights": len(rr_weights), "quantize_embeddings": o["quantize_embeddings"],
            "op_types": list(STATIC_OP_TYPES), "ops": counts}


def _outputs(proto, node_names: list[str]) -> set[str]:
    wanted = set(node_names)
    return {o for n in proto.graph.node if n.name in wanted for o in n.output}


def _calibrate(src: Path, work: Path, method, feeds: list[dict], names: list[str], skip: set[str],
               percentile: float, cache: Path) -> None:
    """Activation ranges with ORT's calibrator, one batch per pass (ranges and histograms merge
    across batches of different sequence lengths, memory stays flat), tensors in `skip` left out
    (the mask and masked attention scores: ORT would calibrate them though their node is excluded, and its
    histograms fail on a +-3.4e38 range). Written to `cache` for quantize_static."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    cal = create_calibrator(src, list(STATIC_OP_TYPES), augmented_model_path=str(work / "augmented.onnx"),
                            calibrate_method=method, extra_options={"symmetric": False, "percentile": percentile})
    if getattr(cal, "tensors_to_calibrate", None) is not None:
        cal.tensors_to_calibrate = set(cal.tensors_to_calibrate) - skip
    for f in feeds:
        cal.collect_data(_FeedReader([f], names))
    save_tensors_data(cal.compute_data(), cache)


def mask_readers(proto, mask_input: str = "attention_mask") -> tuple[list[str], set[str]]:
    """(names of the nodes where the additive attention mask meets data, e.g. `Add(scores, mask)`.
    The mask tensors are those computed from the mask input, constants and integer (shape)
    tensors only. The additive mask holds float32 min (-3.4e38) at padded keys: a QDQ pair on
    the masked scores gets a range of +-3.4e38 and rounds every score to 0 (and ORT's histogram
    observers fail on such a range), so these nodes stay float."""
    import onnx
    from onnx import TensorProto

    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - contrib ops: fall back to no type information
        typed = proto
    elem = {v.name: v.type.tensor_type.elem_type for v in
            list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output)}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.UNDEFINED)
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    derived = {i.name for i in proto.graph.input if i.name == mask_input}
    readers = []
    for n in proto.graph.node:  # topological order
        ins = [i for i in n.input if i]
        if not any(i in derived for i in ins):
            continue
        if all(i in derived or i in consts or elem.get(i, TensorProto.UNDEFINED) not in floats for i in ins):
            derived.update(n.output)
        else:
            readers.append(n.name)
    return readers, derived


def int8_flow(proto) -> dict:
    """What an ONNX Runtime session made of a QDQ graph (load the file written to
    SessionOptions.optimized_model_filepath): {op_type: count} of the int8 ops, the
    DequantizeLinear nodes left, and `int8_edges`: tensors an int8 op writes and another int8 op
    reads (activations that stay int8 between ops, never dequantized on the way)."""
    from onnx import TensorProto

    int8_ops = {"QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSoftmax", "QLinearConcat", "QAttention",
                "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool"}
    moves = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather"}  # int8 in, int8 out where fed int8
    vi = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.output)}
    int8 = {TensorProto.UINT8, TensorProto.INT8}
    producer = {o: n for n in proto.graph.node for o in n.output}
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type in int8_ops or n.op_type in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
                                                  "MatMulIntegerToFloat", "MatMul", "MatMulInteger"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1

    def int8_source(t: str, depth: int = 0):
        """The int8 op (or QuantizeLinear) whose output reaches tensor t through data movement only."""
        p = producer.get(t)
        if p is None or depth > 8:
            return None
        if p.op_type in int8_ops or p.op_type == "QuantizeLinear":
            return p
        if p.op_type in moves and (vi.get(t) in int8 or vi.get(p.input[0]) in int8):
            return int8_source(p.input[0], depth + 1)
        return None

    edges = 0
    for n in proto.graph.node:
        if n.op_type in int8_ops:
            for i in n.input:
                src = int8_source(i)
                if src is not None and src.op_type in int8_ops:
                    edges += 1
    return {"ops": counts, "int8_ops": sum(v for k, v in counts.items() if k in int8_ops), "int8_edges": edges}


def _has_contrib_ops(proto) -> bool:
    return any(n.domain == "com.microsoft" for n in proto.graph.node)


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
        "model_file": MODEL_FILE,
        "bytes": (folder / MODEL_FILE).stat().st_size,
        "inputs": [{"name": n, "dtype": "int64", "axes": {0: "batch", 1: "sequence"}} for n in names],
        "outputs": [{"name": outputs[0], "dtype": "float32", "axes": seq_out}],
        "pooling": asdict(sm.pooling) if sm.pooling is not None else None,
        "optimize": bool(optimize),
        "quantize": quantize,
        "options": options,
        "session": {"disabled_optimizers": list(SESSION_DISABLED_OPTIMIZERS)},
        "steps": steps,
        "model_meta": sm.meta,
    }
