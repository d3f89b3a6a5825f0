"""Pruning method configs (frozen dataclasses; used directly or as recipe steps).

Sparsity (weights set to zero, stored compactly: smaller files, same speed on CPU):
`magnitude`, `wanda`, `sparsegpt`. Structure (physically removed, smaller and faster):
`prune_heads`, `prune_ffn`, `drop_layers`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.config import MethodConfig
from ..core.errors import ConfigError


def parse_pattern(pattern: str) -> tuple[int, int]:
    """"" -> (0, 0) (unstructured); "2:4" -> (2, 4)."""
    if not pattern:
        return 0, 0
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)) <= 64:
        raise ConfigError(f"pattern={pattern!r} is not an N:M pattern; accepted: '' (unstructured) or N:M with "
                          "0 < N < M <= 64, e.g. '2:4' or '4:8'")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class _SparsityConfig(MethodConfig):
    """amount: fraction of each layer's weights set to zero, in [0, 1) (ignored with a pattern);
    pattern: "" (unstructured) or "N:M" (at most N nonzero of every M consecutive inputs, e.g.
    2:4). targets/ignore: the Linear layers (default: every Linear except the LM head and a
    classifier head)."""

    amount: float = 0.5
    pattern: str = ""

    def validate(self) -> None:
        self._check_range("amount", 0.0, 1.0, hi_open=True)
        parse_pattern(self.pattern)


@dataclass(frozen=True)
class MagnitudeConfig(_SparsityConfig):
    """Zero the smallest |W|: per layer, or over all layers at once (scope "global"). No data."""

    method = "magnitude"
    scope: str = "layer"

    def validate(self) -> None:
        super().validate()
        self._check_choice("scope", ("layer", "global"))
        if self.scope == "global" and self.pattern:
            raise ConfigError("MagnitudeConfig: scope='global' picks weights over all layers; an N:M pattern is per "
                              "group of M inputs (use scope='layer')")


@dataclass(frozen=True)
class WandaConfig(_SparsityConfig):
    """Wanda (Sun et al. 2023): zero the weights with the smallest |W_ij| * ||X_j||_2 in each
    output row, X from calibration data (needs data; no weight update). sequential: calibrate
    layer by layer on the outputs of the already-pruned layers (as the paper's code does)."""

    method = "wanda"
    sequential: bool = True
    calibration_tokens: int = 512
    calibration_samples: int = 64

    def validate(self) -> None:
        super().validate()
        self._check_bool("sequential")
        self._check_range("calibration_tokens", 16, 8192)
        self._check_range("calibration_samples", 1, 4096)


@dataclass(frozen=True)
class SparseGPTConfig(_SparsityConfig):
    """SparseGPT (Frantar & Alistarh 2023): prune by OBS saliency and update the remaining weights
    to reconstruct each layer's output on calibration data (the calibration Hessian GPTQ uses),
    layer by layer. bits 4 or 8: joint mode, the kept weights are also quantized (group-wise,
    group_size columns) in the same pass and saved as one sparse int model; 0: float values."""

    method = "sparsegpt"
    bits: int = 0
    group_size: int = 128
    damp: float = 0.01
    blocksize: int = 128
    sequential: bool = True
    calibration_tokens: int = 512
    calibration_samples: int = 64

    def validate(self) -> None:
        super().validate()
        self._check_choice("bits", (0, 4, 8))
        self._check_choice("group_size", (32, 64, 128, 256))
        self._check_range("damp", 0.0, 1.0, lo_open=True)
        self._check_choice("blocksize", (32, 64, 128, 256))
        self._check_bool("sequential")
        self._check_range("calibration_tokens", 16, 8192)
        self._check_range("calibration_samples", 1, 4096)


IMPORTANCE_HELP = "see slimformer.prune.importance.IMPORTANCE"


@dataclass(frozen=True)
class _StructureConfig(MethodConfig):
    amount: float = 0.25
    importance: str = "magnitude"
    scope: str = "layer"
    calibration_samples: int = 64
    calibration_tokens: int = 128

    def validate(self) -> None:
        from .importance import IMPORTANCE

        self._check_range("amount", 0.0, 1.0, hi_open=True)
        self._check_choice("importance", tuple(IMPORTANCE.names()))
        self._check_choice("scope", ("layer", "global"))
        self._check_range("calibration_samples", 1, 4096)
        self._check_range("calibration_tokens", 8, 8192)


@dataclass(frozen=True)
class HeadPruningConfig(_StructureConfig):
    """Remove the `amount` least important attention units of each layer (scope "layer": the same
    count everywhere, so the config can express it where the architecture allows) or of the whole
    model (scope "global", at least one unit kept per layer). A unit is a head, or under GQA a
    key/value head with the query heads that read it. importance: a name from
    `slimformer.prune.importance.IMPORTANCE` (magnitude, activation, taylor, random)."""

    method = "prune_heads"


@dataclass(frozen=True)
class FFNPruningConfig(_StructureConfig):
    """Remove the `amount` least important FFN intermediate neurons of each layer (or of the whole
    model, scope "global"). bias_compensation (FLAP): add the mean contribution of the removed
    neurons, measured on calibration data, to the down projection's bias."""

    method = "prune_ffn"
    bias_compensation: bool = False

    def validate(self) -> None:
        super().validate()
        self._check_bool("bias_compensation")


@dataclass(frozen=True)
class LayerDropConfig(MethodConfig):
    """Remove whole layers: `count` of them (or the `amount` fraction), the least important by
    `importance` ("block_influence": 1 - cosine between a layer's input and output on calibration
    data, ShortGPT; "last": the deepest layers)."""

    method = "drop_layers"
    count: int = 0
    amount: float = 0.0
    importance: str = "block_influence"
    calibration_samples: int = 32
    calibration_tokens: int = 128

    def validate(self) -> None:
        self._check_range("count", 0, 10000)
        self._check_range("amount", 0.0, 1.0, hi_open=True)
        if bool(self.count) == bool(self.amount):
            raise ConfigError("LayerDropConfig: give exactly one of count (layers to remove) or amount (a fraction)")
        self._check_choice("importance", ("block_influence", "last"))
        self._check_range("calibration_samples", 1, 4096)
        self._check_range("calibration_tokens", 8, 8192)


@dataclass(frozen=True)
class _DuringTrainingConfig(MethodConfig):
    """Pruning that acts during the next training step of the recipe (distill or finetune):
    amount: the fraction pruned at the end of the schedule, in [0, 1). structure: "ffn" (FFN
    neurons, masked during training and physically removed after it: smaller and faster) or
    "weights" (single weights of every Linear, stored sparse after it: smaller files, same speed
    on CPU). start / end: where the cubic schedule (Zhu & Gupta 2017) starts and reaches `amount`,
    as fractions of the training steps; every: steps between mask updates. scope: "layer" (the same
    fraction in every layer) or "global" (ffn: neurons ranked over all layers)."""

    amount: float = 0.5
    structure: str = "ffn"
    start: float = 0.0
    end: float = 0.7
    every: int = 50
    scope: str = "layer"

    def validate(self) -> None:
        self._check_range("amount", 0.0, 1.0, hi_open=True)
        self._check_choice("structure", ("ffn", "weights"))
        self._check_range("start", 0.0, 1.0, hi_open=True)
        self._check_range("end", 0.0, 1.0)
        if self.end <= self.start:
            raise ConfigError(f"{type(self).__name__}: end={self.end} must be after start={self.start} (fractions of "
                              "the training steps)")
        self._check_range("every", 1, 10**6)
        self._check_choice("scope", ("layer", "global"))
        if self.structure == "weights" and self.scope != "layer":
            raise ConfigError(f"{type(self).__name__}: scope='global' applies to structure='ffn'")


@dataclass(frozen=True)
class MovementConfig(_DuringTrainingConfig):
    """Movement pruning (Sanh et al. 2020) during the next training step: what moves towards zero
    is pruned, whatever its size. For FFN neurons the score of a neuron accumulates -dL/dm, m the
    gate on its activation (straight-through: a masked neuron keeps its score moving and can come
    back before the schedule ends); for weights it accumulates -W * dL/dW."""

    method = "movement"


@dataclass(frozen=True)
class GradualMagnitudeConfig(_DuringTrainingConfig):
    """Gradual magnitude pruning (Zhu & Gupta 2017) during the next training step: the smallest
    weights (or FFN neurons by the norm of their weights) are masked on a cubic schedule."""

    method = "gradual_magnitude"


@dataclass(frozen=True)
class GroupLassoConfig(MethodConfig):
    """L1 over groups (group lasso) during the next training step: each step adds weight x
    w_g / ||w_g|| to the gradient of every attention head's and FFN neuron's weights, driving whole
    groups to zero; after training, groups whose norm fell below threshold x their layer's median
    are removed (smaller and faster)."""

    method = "group_lasso"
    weight: float = 1e-3
    threshold: float = 0.05
    heads: bool = True
    ffn: bool = True

    def validate(self) -> None:
        self._check_range("weight", 0.0, 1.0, lo_open=True)
        self._check_range("threshold", 0.0, 1.0)
        self._check_bool("heads", "ffn")
        if not (self.heads or self.ffn):
            raise ConfigError("GroupLassoConfig: heads and ffn are both false; nothing to prune")
