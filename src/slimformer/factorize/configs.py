"""Configs of the factorization family: low-rank (svd, fwsvd, asvd, svd_llm), the factorized
token embedding, and cross-layer weight sharing (share_layers, basis_sharing)."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import MethodConfig

ALLOCATIONS = ("uniform", "spectrum")


@dataclass(frozen=True)
class _LowRankConfig(MethodConfig):
    """ratio: the fraction of the targeted layers' parameters kept (0.8 removes 20%). rank: one
    fixed rank for every targeted layer instead (0: from ratio). allocation: `uniform` (every
    layer keeps `ratio` of its own parameters) or `spectrum` (a global ranking of the layers'
    (weighted) singular values picks each layer's rank; the total meets the ratio). parts: which
    of the Transformer layers' linear layers are targeted by default: all, attention (q/k/v/o) or
    ffn; `targets` (module names, classes, 're:' patterns) overrides it. rank_multiple: round each
    allocated rank down to a multiple of this (ranks below it stay as they are): kernels want it,
    e.g. 16 lets torch's CPU int4 kernel take both factors after a 4-bit quantization step."""

    ratio: float = 0.8
    rank: int = 0
    allocation: str = "uniform"
    parts: str = "all"
    rank_multiple: int = 1

    def validate(self) -> None:
        self._check_range("ratio", 0.0, 1.0, lo_open=True)
        self._check_choice("parts", ("all", "attention", "ffn"))
        self._check_choice("rank_multiple", (1, 8, 16, 32, 64))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise _err(self, "rank", "0 (from ratio) or a positive integer")
        self._check_choice("allocation", ALLOCATIONS)


@dataclass(frozen=True)
class _DataConfig(_LowRankConfig):
    calibration_samples: int = 64
    calibration_tokens: int = 256

    def validate(self) -> None:
        super().validate()
        self._check_range("calibration_samples", 1, 4096)
        self._check_range("calibration_tokens", 16, 8192)


@dataclass(frozen=True)
class SvdConfig(_LowRankConfig):
    """Plain truncated SVD of each weight: the baseline, needs no data."""

    method = "svd"


@dataclass(frozen=True)
class FwsvdConfig(_DataConfig):
    """Fisher-weighted SVD (Hsu et al., ICLR 2022): each output row weighted by its Fisher
    importance, the summed squared gradients of the loss on calibration data (the LM loss for a
    causal LM; for other models the Gaussian-likelihood Fisher of the outputs, from gradients of
    random projections of them)."""

    method = "fwsvd"


@dataclass(frozen=True)
class AsvdConfig(_DataConfig):
    """Activation-aware SVD (Yuan et al., 2023): input channels scaled by (mean |x|)^alpha of the
    calibration activations before the SVD, the scaling undone after."""

    method = "asvd"
    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        self._check_range("alpha", 0.0, 2.0)


@dataclass(frozen=True)
class SvdLlmConfig(_DataConfig):
    """SVD-LLM (Wang et al., ICLR 2025): truncation-aware whitening by the Cholesky factor S of
    the calibration Gram matrix (X X^T = S S^T); each truncated singular value of W S is exactly
    the loss ||W X - a b X||_F it causes. allocation `spectrum` ranks the whitened singular
    values of all layers globally. sequential: layer by layer, each layer whitened with the inputs
    the already-factorized layers before it give, as GPTQ calibrates (measured worse on SmolLM2:
    benchmarks/results/factorize_lm.md); default False: every layer from one pass of the unchanged
    model (the paper's setting)."""

    method = "svd_llm"
    sequential: bool = False

    def validate(self) -> None:
        super().validate()
        self._check_bool("sequential")


@dataclass(frozen=True)
class EmbeddingFactorConfig(MethodConfig):
    """ALBERT's factorized embedding parametrisation: the token table V x h as V x rank times
    rank x h (truncated SVD of the table). Not for a table tied to an LM head."""

    method = "factorize_embedding"
    rank: int = 128

    def validate(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise _err(self, "rank", "a positive integer")


@dataclass(frozen=True)
class ShareLayersConfig(MethodConfig):
    """ALBERT-style cross-layer sharing: groups of `group` adjacent layers share one set of
    linear weights (q/k/v/o, FFN), initialised from the group's `init` (`mean` of the members, or
    the `first` member); norms stay per layer. Saves bytes, not compute; recover with a
    distillation step."""

    method = "share_layers"
    group: int = 2
    init: str = "mean"

    def validate(self) -> None:
        self._check_range("group", 2, 64)
        self._check_choice("init", ("mean", "first"))


@dataclass(frozen=True)
class BasisSharingConfig(_DataConfig):
    """Basis Sharing (Wang et al., ICLR 2025): for each kind of linear weight, the layers of a
    group of `group` adjacent layers share one whitened SVD basis (the first factor) and keep
    their own coefficients; ratio: the fraction of the layers' linear parameters kept. The kinds not
in `shared` (by default o and down, which the paper finds share poorly) are factorized one layer
at a time with the same whitening (SVD-LLM)."""

    method = "basis_sharing"
    group: int = 2
    shared: tuple[str, ...] = ("q", "k", "v", "qkv", "gate", "up")

    def validate(self) -> None:
        super().validate()
        self._check_range("group", 2, 64)
        roles = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
        bad = [r for r in self.shared if r not in roles]
        if bad or not self.shared:
            raise _err(self, "shared", f"one or more of {', '.join(roles)} (the kinds of weight whose bases the "
                                       "layers of a group share; the others are factorized one layer at a time)")
        if self.rank:
            raise _err(self, "rank", "0 (basis_sharing sizes its bases from ratio)")
        if self.allocation != "uniform":
            raise _err(self, "allocation", "uniform")


def _err(cfg, name: str, accepted: str):
    from ..core.errors import ConfigError

    return ConfigError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r} is not accepted; accepted: {accepted}")
