"""Quantization method configs (frozen dataclasses; used directly or as recipe steps)."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import MethodConfig


@dataclass(frozen=True)
class Int8DynamicConfig(MethodConfig):
    """W8A8 dynamic: int8 weights per output channel, activations int8 per token at run time,
    for the Linear layers; `embeddings` also stores the token embedding table int8 per row."""

    method = "int8_dynamic"
    embeddings: bool = True

    def validate(self) -> None:
        if not isinstance(self.embeddings, bool):
            raise ValueError(f"Int8DynamicConfig.embeddings must be true/false, got {self.embeddings!r}")


@dataclass(frozen=True)
class WeightOnlyConfig(MethodConfig):
    """Weight-only group-wise quantization of Linear layers (activations stay float).

    bits 4 or 8; group_size 32/64/128 (or -1: one group per row); algorithm "rtn"
    (round-to-nearest) or "gptq" (needs calibration data; damp = fraction of the mean Hessian
    diagonal added; act_order quantizes columns by decreasing activation energy).
    lm_head: also quantize the output projection (int8 per channel when tied to embeddings);
    embeddings: store the token embedding table int8 per row.
    """

    method = "weight_only"
    bits: int = 4
    group_size: int = 128
    algorithm: str = "rtn"
    symmetric: bool = False
    damp: float = 0.01
    act_order: bool = False
    lm_head: bool = True
    embeddings: bool = True
    calibration_tokens: int = 512  # tokens per calibration sequence (GPTQ)

    def validate(self) -> None:
        self._check_choice("bits", (4, 8))
        self._check_choice("algorithm", ("rtn", "gptq"))
        if self.group_size != -1 and self.group_size not in (16, 32, 64, 128, 256):
            self._check_choice("group_size", (-1, 16, 32, 64, 128, 256))
        self._check_range("damp", 0.0, 1.0, lo_open=True)
        self._check_range("calibration_tokens", 16, 8192)


@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    """Migrate activation outliers into weights: x/s, W*s with s_j = max|x_j|^a / max|W_j|^(1-a),
    folded exactly into the preceding norm (pre-LN models) or value projection (attention
    output). Run before an int8 step (W8A8). alpha in [0, 1]."""

    method = "smoothquant"
    alpha: float = 0.5

    def validate(self) -> None:
        self._check_range("alpha", 0.0, 1.0)
