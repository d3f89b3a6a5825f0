"""Quantization: configs + handlers (registered as recipe methods), math in pure tensor modules."""
from __future__ import annotations

from ..core.config import MethodConfig, apply_method
from . import restore as _restore  # noqa: F401  (registers the quantized module types for loading)
from .cast import cast
from .configs import (AwqConfig, CastConfig, Int8DynamicConfig, Int8StaticConfig, RotateConfig, SmoothQuantConfig,
                      WeightOnlyConfig)
from .handlers import META_KEY, int8_dynamic, int8_static, smoothquant
from .mixed import mixed_precision
from .schemes import SCHEMES, MixedPrecisionConfig, final_config, quantize_steps, scheme_steps
from .weight_only import awq_step, rotate_step, weight_only



def scheme_config(name: str) -> MethodConfig:
    """The quantizer step of a named scheme (its float steps: `scheme_steps`)."""
    return final_config(name)


def quantize_(model, config: MethodConfig, data=None) -> list[str]:
    """Quantize `model` (a SlimModel) in place with `config`; `data`: calibration texts (GPTQ,
    AWQ, static int8, SmoothQuant, mixed precision). The step and its details are recorded in
    `model.meta["steps"]`. Returns warnings."""
    return apply_method(model, config, data).warnings


__all__ = ["SCHEMES", "scheme_config", "scheme_steps", "quantize_steps", "Int8DynamicConfig", "Int8StaticConfig", "WeightOnlyConfig",
           "SmoothQuantConfig", "MixedPrecisionConfig", "AwqConfig", "RotateConfig", "CastConfig", "quantize_", "META_KEY"]
