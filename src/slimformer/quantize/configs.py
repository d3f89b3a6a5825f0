"""Quantization method configs (frozen dataclasses; used directly or as recipe steps)."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import MethodConfig
from ..core.errors import ConfigError


@dataclass(frozen=True)
class Int8DynamicConfig(MethodConfig):
    """W8A8 dynamic: int8 weights per output channel, activations int8 per token at run time,
    for the Linear layers; `embeddings` also stores the token embedding table int8 per row."""

    method = "int8_dynamic"
    embeddings: bool = True

    def validate(self) -> None:
        self._check_bool("embeddings")


@dataclass(frozen=True)
class WeightOnlyConfig(MethodConfig):
    """Weight-only group-wise quantization of Linear layers (activations stay float).

    bits 4 or 8; group_size 32/64/128 (or -1: one group per row); algorithm "rtn"
    (round-to-nearest) or "gptq" (needs calibration data; damp = fraction of the mean Hessian
    diagonal added; act_order quantizes columns by decreasing activation energy; sequential
    calibrates layer by layer on the outputs of the already-quantized layers before it, as in
    the GPTQ paper, instead of one pass of the float model); true_sequential also goes in call
    order inside each layer (q/k/v, then o, then gate/up, then down), each group calibrated on
    the outputs of the groups already quantized (off by default: on SmolLM2-135M it took ~2x
    the time for no gain, 23.99 vs 23.76 perplexity). refit (GPTQ only): after GPTQ fixes the
    codes, re-solve each row's group scales and zero points (float32) exactly for the least
    layer-output error on the calibration Hessian (weighted least squares, per row; rows where it
    would not help keep GPTQ's). cd_passes (GPTQ only): after GPTQ (and refit), that many rounds of
    cyclic coordinate descent on the codes (QuantEase-style: each column re-rounded to the best
    grid point given all the others, never raising the layer-output error), each followed by a
    refit when refit is on; on SmolLM2-135M int4 g128 with rotation, 3 passes lowered perplexity
    for each of three rotation seeds (27.44 / 27.91 / 27.14 -> 27.18 / 27.46 / 27.00) for ~50% more
    GPTQ time. clip: per-row search of a range
    shrink factor (1.00 down to 0.80) that minimises the group's rounding error, for RTN and GPTQ.
    float_zeros (asymmetric only): each group's grid spans exactly its [min, max], with a float32
    zero point instead of a uint8 code (GGUF Q4_1 style); on a model dequantized from a Q4_1/Q8_0
    GGUF, group 32 with float zeros reproduces the GGUF weights exactly.
    lm_head: also quantize the output projection (int8 per channel when tied to embeddings);
    embeddings: store the token embedding table int8 per row. int8_targets: Linear layers (names,
    class names or 're:' patterns) quantized with 8 bits instead of 4, same group size and
    algorithm (mixed int4/int8; mixed_precision with fallback="int8" picks them by sensitivity).
    fine_targets: Linear layers quantized at the same bits on a finer grid, group fine_group_size
    (default 32) with float zero points - a model that stays all 4-bit with per-layer group sizes
    (mixed_precision with fallback="int4-g32" picks them by sensitivity).
    The float re-parametrisations that help it are steps of their own, in front of it:
    `awq` (AwqConfig) and `rotate` (RotateConfig).
    """

    method = "weight_only"
    bits: int = 4
    group_size: int = 128
    algorithm: str = "rtn"
    symmetric: bool = False
    clip: bool = False
    float_zeros: bool = False
    damp: float = 0.01
    act_order: bool = False
    refit: bool = False
    cd_passes: int = 0
    sequential: bool = True
    true_sequential: bool = False
    lm_head: bool = True
    embeddings: bool = True
    int8_targets: tuple[str, ...] = ()  # patterns (like targets) quantized at 8 bits: mixed int4/int8
    fine_targets: tuple[str, ...] = ()  # patterns quantized at the same bits on a finer grid
    fine_group_size: int = 32
    calibration_tokens: int = 512  # tokens per calibration sequence (GPTQ)
    calibration_samples: int = 64  # calibration sequences (GPTQ)

    def validate(self) -> None:
        self._check_choice("bits", (4, 8))
        self._check_choice("algorithm", ("rtn", "gptq"))
        if self.group_size != -1 and self.group_size not in (16, 32, 64, 128, 256):
            self._check_choice("group_size", (-1, 16, 32, 64, 128, 256))
        self._check_range("damp", 0.0, 1.0, lo_open=True)
        self._check_bool("symmetric", "clip", "float_zeros", "act_order", "refit", "sequential", "true_sequential", "lm_head",
                         "embeddings")
        self._check_range("cd_passes", 0, 20)
        if self.cd_passes and self.algorithm != "gptq":
            raise ConfigError(f"WeightOnlyConfig.cd_passes={self.cd_passes} refines GPTQ's codes against the "
                              "calibration Hessian, so it needs algorithm='gptq' (got algorithm='rtn')")
        for name in ("int8_targets", "fine_targets"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or not all(isinstance(p, str) for p in v):
                raise ConfigError(f"WeightOnlyConfig.{name}={v!r} must be a list of module names, class names or "
                                  "'re:' patterns")
        self._check_choice("fine_group_size", (16, 32, 64, 128))
        if self.fine_targets and self.group_size != -1 and self.fine_group_size >= self.group_size:
            raise ConfigError(f"WeightOnlyConfig.fine_group_size={self.fine_group_size} must be smaller than "
                              f"group_size={self.group_size} (fine_targets get a finer grid)")
        if self.int8_targets and self.bits != 4:
            raise ConfigError(f"WeightOnlyConfig.int8_targets keeps layers at 8 bits inside a 4-bit model; "
                              f"it needs bits=4 (got bits={self.bits})")
        if self.float_zeros and self.symmetric:
            raise ConfigError("WeightOnlyConfig.float_zeros=True gives each group an affine grid over its [min, max]; "
                              "it needs symmetric=False")
        if self.refit and self.algorithm != "gptq":
            raise ConfigError("WeightOnlyConfig.refit=True re-solves GPTQ's group scales against the calibration "
                             "Hessian, so it needs algorithm='gptq' (got algorithm='rtn')")
        self._check_range("calibration_tokens", 16, 8192)
        self._check_range("calibration_samples", 1, 4096)


@dataclass(frozen=True)
class AwqConfig(MethodConfig):
    """Activation-aware weight scaling (AWQ), a float step in front of `weight_only`: per-channel
    scales folded exactly into the model (pre-norm -> q/k/v and gate/up, up -> down, v -> o),
    each searched on calibration data for the least layer-output rounding error under the
    weight-only grid that follows (bits, group_size, symmetric, float_zeros: give the same values
    as the weight_only step). Needs data. SmolLM2-135M int4 g128 RTN: +28.5% perplexity instead
    of +39.9%; on top of GPTQ no reliable gain (benchmarks/results/quantize_lm*.md)."""

    method = "awq"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    float_zeros: bool = False
    calibration_tokens: int = 512
    calibration_samples: int = 64

    def validate(self) -> None:
        self._check_choice("bits", (4, 8))
        if self.group_size != -1 and self.group_size not in (16, 32, 64, 128, 256):
            self._check_choice("group_size", (-1, 16, 32, 64, 128, 256))
        self._check_bool("symmetric", "float_zeros")
        if self.float_zeros and self.symmetric:
            raise ConfigError("AwqConfig.float_zeros=True needs symmetric=False")
        self._check_range("calibration_tokens", 16, 8192)
        self._check_range("calibration_samples", 1, 4096)


@dataclass(frozen=True)
class RotateConfig(MethodConfig):
    """Hadamard rotation (QuaRot / SpinQuant-style incoherence processing), a float step in front
    of `weight_only`: the residual stream and each head's v -> o are rotated by random-sign
    Hadamard matrices folded into the weights, and each FFN down projection rotates its input at
    run time (a fast Hadamard); exact in float (see quantize/rotation.py). Pre-norm RMSNorm
    decoders (Llama family) only. seed: the random signs (GPTQ results vary with it).
    SmolLM2-135M int4 g128 GPTQ: +10.7% perplexity instead of +18.3% (+9.6% with cd_passes=3:
    scheme w4-gptq-rot); with round-to-nearest it hurts (+118%). targets/ignore: the down
    projections that get the run-time rotation (default: all)."""

    method = "rotate"
    seed: int = 0

    def validate(self) -> None:
        self._check_range("seed", 0, 2**31 - 1)


@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    """Migrate activation outliers into weights: x/s, W*s with s_j = max|x_j|^a / max|W_j|^(1-a),
    folded exactly into the preceding norm (pre-LN models) or value projection (attention
    output). Run before an int8 step (W8A8). alpha in [0, 1]."""

    method = "smoothquant"
    alpha: float = 0.5

    def validate(self) -> None:
        self._check_range("alpha", 0.0, 1.0)


@dataclass(frozen=True)
class Int8StaticConfig(MethodConfig):
    """W8A8 static: int8 weights (per_channel or per_tensor), activations int8 with one scale
    per layer input fixed from calibration data by an observer: "minmax", "percentile"
    (clips the top 100 - percentile % of |x|) or "mse" (clipping that minimises the error).
    In PyTorch eager each layer re-quantizes its input (activations are not kept int8 between
    ops); the ONNX export is where int8 can flow between ops."""

    method = "int8_static"
    observer: str = "percentile"
    percentile: float = 99.99
    per_channel: bool = True
    embeddings: bool = True
    calibration_tokens: int = 128

    def validate(self) -> None:
        self._check_choice("observer", ("minmax", "percentile", "mse"))
        self._check_range("percentile", 90.0, 100.0)
        self._check_range("calibration_tokens", 8, 8192)


@dataclass(frozen=True)
class CastConfig(MethodConfig):
    """Run the model in a 16-bit float type: dtype "bf16", "fp16", or "auto" (bf16 where the
    device runs it natively: CPUs with AMX-BF16 or AVX512-BF16, CUDA GPUs with bf16; elsewhere the
    model stays float32 and the step says why: emulated bf16 is slower than float32). Halves the
    bytes; on a 2-core AMX Xeon all-MiniLM-L6-v2 in bf16 ran 4.3x its float32 throughput at
    Spearman 86.71 (float32 86.72). Saved in that dtype and reloaded in it."""

    method = "cast"
    dtype: str = "auto"

    def validate(self) -> None:
        self._check_choice("dtype", ("auto", "bf16", "fp16"))
