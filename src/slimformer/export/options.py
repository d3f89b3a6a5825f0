"""ONNX export constants and options (EXPORT_OPTIONS), validated in one place."""
from __future__ import annotations

from ..core.errors import ConfigError, SlimformerError
from ..core.hardware import has_vnni

ONNX_META_FILE = "slimformer_onnx.json"
MODEL_FILE = "model.onnx"
SUPPORTED_KINDS = ("embedding", "classification", "causal-lm")
QUANTIZE_MODES = ("int8", "int8-static", "int8-weights", "int8-nncf")
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
    "reduce_range": "auto",         # 7-bit weights for these roles; True: all MatMuls, False/(): none; "auto":
                                    # ("qkv", "o") on x86 without VNNI (the u8s8 kernel's int16 pair sums
                                    # saturate there), none with VNNI (no saturation; ~2.5% faster on MiniLM)
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
    "act_group_size": 384,          # int8-weights on OpenVINO: activations quantized at run time per token and
                                    # group of this many input channels (must divide each input width); 0: off
                                    # (float products). See export/onnx.py
}



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
    if rr == "auto":
        rr = () if has_vnni() else ("qkv", "o")
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
    g = o["act_group_size"]
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise ConfigError(f"act_group_size: expected an integer >= 0 (0: no run-time activation quantization), got {g!r}")
    n = o["calibration_samples"]
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration_samples: expected an integer >= 1, got {n!r}")
    return o


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


