"""Quantization: configs + handlers (registered as recipe methods), math in pure tensor modules."""
from __future__ import annotations

from ..core.config import MethodConfig, register_method
from ..models.hooks import RESTORE_HOOKS
from .configs import Int8DynamicConfig, SmoothQuantConfig, WeightOnlyConfig
from .handlers import META_KEY, int8_dynamic, restore, weight_only

register_method(Int8DynamicConfig, int8_dynamic)
register_method(WeightOnlyConfig, weight_only)
RESTORE_HOOKS.register(META_KEY, restore)


# named schemes for `slimformer quantize --scheme`
SCHEMES = {
    "int8": Int8DynamicConfig(),
    "w8": WeightOnlyConfig(bits=8, group_size=128),
    "w4": WeightOnlyConfig(bits=4, group_size=128),
    "w4-gptq": WeightOnlyConfig(bits=4, group_size=128, algorithm="gptq"),
    "w4-gptq-g64": WeightOnlyConfig(bits=4, group_size=64, algorithm="gptq"),
    "w4-gptq-g32": WeightOnlyConfig(bits=4, group_size=32, algorithm="gptq"),
}


def scheme_config(name: str) -> MethodConfig:
    from ..core.errors import ConfigError

    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}; accepted: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def quantize_(model, config: MethodConfig, data=None) -> list[str]:
    """Quantize `model` (a SlimModel) in place with `config`; `data`: calibration texts (GPTQ,
    static int8, SmoothQuant). Returns warnings."""
    from ..core.config import handler_for

    return handler_for(config)(model, config, data) or []


__all__ = ["SCHEMES", "scheme_config", "Int8DynamicConfig", "WeightOnlyConfig", "SmoothQuantConfig", "quantize_"]
