"""Quantization: configs + handlers (registered as recipe methods), math in pure tensor modules."""
from __future__ import annotations

from ..core.config import MethodConfig, register_method
from ..models.hooks import RESTORE_HOOKS
from .configs import (Int8DynamicConfig, Int8StaticConfig, MixedPrecisionConfig, SmoothQuantConfig,
                      WeightOnlyConfig)
from .handlers import META_KEY, int8_dynamic, int8_static, restore, smoothquant, weight_only

# named schemes for `slimformer quantize --scheme` and MixedPrecisionConfig.scheme
SCHEMES = {
    "int8": Int8DynamicConfig(),
    "int8-static": Int8StaticConfig(),
    "w8": WeightOnlyConfig(bits=8, group_size=128),
    "w4": WeightOnlyConfig(bits=4, group_size=128),
    # round-to-nearest after activation-aware scaling (AWQ, quantize/awq.py): needs calibration
    # data but no GPTQ pass
    "w4-awq": WeightOnlyConfig(bits=4, group_size=128, awq=True),
    "w4-gptq": WeightOnlyConfig(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, refit=True),
    # GPTQ on a Hadamard-rotated model (quantize/rotation.py), then 3 rounds of coordinate descent
    # on the codes + refit: Llama-family decoders only
    "w4-gptq-rot": WeightOnlyConfig(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, refit=True,
                                    rotate=True, cd_passes=3),
    "w4-gptq-g64": WeightOnlyConfig(bits=4, group_size=64, algorithm="gptq", act_order=True, clip=True, refit=True),
    "w4-gptq-g32": WeightOnlyConfig(bits=4, group_size=32, algorithm="gptq", act_order=True, clip=True, refit=True),
    # group 32, grid over each group's [min, max] with a float zero point: re-packs a model
    # dequantized from a Q4_1 GGUF exactly (no data needed)
    "w4-g32-fz": WeightOnlyConfig(bits=4, group_size=32, float_zeros=True),
}

from .mixed import mixed_precision  # noqa: E402  (needs SCHEMES)

register_method(Int8DynamicConfig, int8_dynamic)
register_method(Int8StaticConfig, int8_static)
register_method(SmoothQuantConfig, smoothquant)
register_method(WeightOnlyConfig, weight_only)
register_method(MixedPrecisionConfig, mixed_precision)
RESTORE_HOOKS.register(META_KEY, restore)


def scheme_config(name: str) -> MethodConfig:
    from ..core.errors import ConfigError

    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}; accepted: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def quantize_(model, config: MethodConfig, data=None) -> list[str]:
    """Quantize `model` (a SlimModel) in place with `config`; `data`: calibration texts (GPTQ,
    static int8, SmoothQuant, mixed precision). Returns warnings."""
    from ..core.config import handler_for

    return handler_for(config)(model, config, data) or []


__all__ = ["SCHEMES", "scheme_config", "Int8DynamicConfig", "Int8StaticConfig", "WeightOnlyConfig",
           "SmoothQuantConfig", "MixedPrecisionConfig", "quantize_"]
