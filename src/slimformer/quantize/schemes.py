"""Named schemes for `slimformer quantize --scheme` and MixedPrecisionConfig.scheme: each is a
list of steps, float re-parametrisations (rotate, awq, smoothquant) first, the quantizer last."""
from __future__ import annotations

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
    from .configs import MixedPrecisionConfig, SmoothQuantConfig

    steps: list[MethodConfig] = [SmoothQuantConfig(alpha=smoothquant)] if smoothquant is not None else []
    scheme_steps(scheme)  # validates the name
    if max_drop is None:
        if fallback != "float" or max_kept != 16 or search_texts is not None:
            raise ConfigError("--fallback, --max-kept and --search-texts only apply with --max-drop")
        return steps + scheme_steps(scheme)
    return steps + [MixedPrecisionConfig(scheme=scheme, max_drop=max_drop, fallback=fallback, max_float=max_kept,
                                         calibration_texts=search_texts)]
