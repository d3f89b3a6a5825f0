"""Named schemes for `slimformer quantize --scheme` and MixedPrecisionConfig.scheme: each is a
list of steps, float re-parametrisations (rotate, awq, smoothquant) first, the quantizer last."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import MethodConfig
from ..core.errors import ConfigError
from .configs import AwqConfig, Int8DynamicConfig, Int8StaticConfig, RotateConfig, WeightOnlyConfig

_GPTQ = dict(algorithm="gptq", act_order=True, clip=True, refit=True)

SCHEMES: dict[str, tuple[MethodConfig, ...]] = {
    "int8": (Int8DynamicConfig(),),
    "int8-static": (Int8StaticConfig(),),
    "w8": (WeightOnlyConfig(bits=8, group_size=128),),
    "w4": (WeightOnlyConfig(bits=4, group_size=128),),
    # round-to-nearest after activation-aware scaling (AWQ, quantize/awq.py): needs calibration
    # data but no GPTQ pass
    "w4-awq": (AwqConfig(bits=4, group_size=128), WeightOnlyConfig(bits=4, group_size=128)),
    "w4-gptq": (WeightOnlyConfig(bits=4, group_size=128, **_GPTQ),),
    # GPTQ on a Hadamard-rotated model (quantize/rotation.py), then 3 rounds of coordinate descent
    # on the codes + refit: Llama-family decoders only
    "w4-gptq-rot": (RotateConfig(seed=0), WeightOnlyConfig(bits=4, group_size=128, cd_passes=3, **_GPTQ)),
    "w4-gptq-g64": (WeightOnlyConfig(bits=4, group_size=64, **_GPTQ),),
    "w4-gptq-g32": (WeightOnlyConfig(bits=4, group_size=32, **_GPTQ),),
    # group 32, grid over each group's [min, max] with a float zero point: re-packs a model
    # dequantized from a Q4_1 GGUF exactly (no data needed)
    "w4-g32-fz": (WeightOnlyConfig(bits=4, group_size=32, float_zeros=True),),
}


def scheme_steps(name: str) -> list[MethodConfig]:
    """The steps of a named scheme; a ConfigError lists the names accepted."""
    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}; accepted: {', '.join(SCHEMES)}")
    return list(SCHEMES[name])


def final_config(name: str) -> MethodConfig:
    """The quantizer of a scheme (its last step)."""
    return scheme_steps(name)[-1]


def quantize_steps(scheme: str, smoothquant: float | None = None, max_drop: float | None = None,
                   fallback: str = "float", max_kept: int = 16, search_texts: int | None = None) -> list[MethodConfig]:
    """The steps `slimformer quantize` runs: [SmoothQuant], then the scheme's steps, or a
    mixed-precision search over the scheme when max_drop is given."""
    from .configs import SmoothQuantConfig

    steps: list[MethodConfig] = [SmoothQuantConfig(alpha=smoothquant)] if smoothquant is not None else []
    scheme_steps(scheme)  # validates the name
    if max_drop is None:
        if fallback != "float" or max_kept != 16 or search_texts is not None:
            raise ConfigError("--fallback, --max-kept and --search-texts only apply with --max-drop")
        return steps + scheme_steps(scheme)
    return steps + [MixedPrecisionConfig(scheme=scheme, max_drop=max_drop, fallback=fallback, max_float=max_kept,
                                         calibration_texts=search_texts)]


@dataclass(frozen=True)
class MixedPrecisionConfig(MethodConfig):
    """Quantize with `scheme` (a name from `slimformer.quantize.SCHEMES`, e.g. "int8"; a scheme's
    float steps, rotation or AWQ scaling, run once before the search) but keep
    the most sensitive Linear layers float until the quality budget holds.

    Sensitivity of a layer = the fidelity drop when only that layer is quantized, measured on
    the calibration texts against the float model: 1 - cosine of sentence embeddings for
    embedding models, KL(float || quantized) of the output distribution for LMs and
    classifiers. Layers are kept float from the most sensitive down until the whole model's
    drop is <= max_drop, or max_float layers are kept.

    fallback "int8" (4-bit weight-only schemes): kept layers go to 8 bits instead of float
    (WeightOnlyConfig.int8_targets), a mixed int4/int8 model. fallback "int4-g32": kept layers stay
    4-bit on a finer grid, group 32 with float zero points (WeightOnlyConfig.fine_targets), a model
    that is all int4 with per-layer group sizes. For GPTQ schemes, sensitivities
    and the budget loop use round-to-nearest at the same bits and group size (GPTQ for every
    candidate set would take minutes each); the final model is GPTQ, and its own drop is reported.

    calibration_texts: texts the search measures on (the first ones of the data). Default: 64;
    for decoder LMs 8, joined and cut into chunks of 128 tokens (at most 8 chunks): the KL over
    about a thousand tokens x the vocabulary is a rich signal, and every probe runs the whole LM
    (SmolLM2-135M: about 1.3 s a layer, 5 minutes for its 210 layers; 64 took 8x that)."""

    method = "mixed_precision"
    scheme: str = "int8"
    max_drop: float = 0.002
    max_float: int = 16
    fallback: str = "float"
    calibration_texts: int | None = None  # None: 64 texts, or for decoder LMs 8 (see above)

    def validate(self) -> None:
        self._check_choice("scheme", tuple(SCHEMES))
        self._check_choice("fallback", ("float", "int8", "int4-g32"))
        if self.fallback != "float":
            s = final_config(self.scheme)
            if getattr(s, "method", None) != "weight_only" or s.bits != 4:
                four = [k for k in SCHEMES if final_config(k).method == "weight_only" and final_config(k).bits == 4]
                raise ConfigError(f"MixedPrecisionConfig.fallback={self.fallback!r} keeps sensitive layers on a finer "
                                  f"grid inside a 4-bit weight-only model; scheme={self.scheme!r} is not one. Accepted: "
                                  f"{', '.join(four)}")
            if self.fallback == "int4-g32" and s.group_size != -1 and s.group_size <= 32:
                coarse = [k for k in SCHEMES if final_config(k).method == "weight_only" and final_config(k).bits == 4
                          and (final_config(k).group_size == -1 or final_config(k).group_size > 32)]
                raise ConfigError(f"MixedPrecisionConfig.fallback='int4-g32' moves layers to group 32; scheme="
                                  f"{self.scheme!r} already has group {s.group_size}. Accepted: {', '.join(coarse)}")
        self._check_range("max_drop", 0.0, 10.0)
        self._check_range("max_float", 0, 100000)
        if self.calibration_texts is not None:
            self._check_range("calibration_texts", 1, 100000)
