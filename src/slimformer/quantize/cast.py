"""The `cast` step: the whole model in bf16 or fp16 (floating tensors only)."""
from __future__ import annotations

import torch

from ..core.config import Applied, Traits, register_method
from ..core.hardware import cpu_info, fast_bf16
from .configs import CastConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@register_method(CastConfig, traits=Traits())
def cast(sm, cfg, run=None) -> Applied:
    device = next(sm.model.parameters()).device.type
    name = cfg.dtype
    if name == "auto":
        if not fast_bf16(device):
            flags = " ".join(cpu_info().get("cpu_flags", [])) or "unknown"
            return Applied([f"cast auto: kept float32; this {device.upper()} has no native bf16 (AMX-BF16 / "
                            f"AVX512-BF16; flags: {flags}), where bf16 runs slower than float32"],
                           {"dtype": "float32", "reason": "no native bf16"})
        name = "bf16"
    sm.model.to(DTYPES[name])
    sm.meta["dtype"] = str(DTYPES[name]).replace("torch.", "")
    return Applied([f"cast: {name}"], {"dtype": sm.meta["dtype"]})
