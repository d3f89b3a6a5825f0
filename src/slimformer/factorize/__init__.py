"""Factorization: low-rank (svd, fwsvd, asvd, svd_llm), the factorized token embedding, and
cross-layer weight sharing (share_layers, basis_sharing)."""
from __future__ import annotations

from ..core.config import MethodConfig, apply_method
from ..models.hooks import register_module_type
from .configs import (AsvdConfig, BasisSharingConfig, EmbeddingFactorConfig, FwsvdConfig, ShareLayersConfig,
                      SvdConfig, SvdLlmConfig)
from .modules import FactorizedEmbedding, LowRankLinear, _build_embedding, _build_low_rank
from . import lowrank as _lowrank  # noqa: F401  (registers svd, fwsvd, asvd, svd_llm, factorize_embedding)
from . import sharing as _sharing  # noqa: F401  (registers share_layers, basis_sharing)

register_module_type("low_rank", _build_low_rank)
register_module_type("factorized_embedding", _build_embedding)

METHOD_CONFIGS = {"svd": SvdConfig, "fwsvd": FwsvdConfig, "asvd": AsvdConfig, "svd_llm": SvdLlmConfig,
                  "basis_sharing": BasisSharingConfig, "share_layers": ShareLayersConfig}


def factorize_(model, config: MethodConfig, data=None) -> list[str]:
    """Factorize or share `model`'s weights (a SlimModel) in place with `config`; `data`:
    calibration texts (fwsvd, asvd, svd_llm, basis_sharing). Returns warnings."""
    return apply_method(model, config, data).warnings


def factorize_steps(method: str, ratio: float = 0.8, rank: int = 0, allocation: str = "uniform", group: int = 2,
                    embedding_rank: int = 0) -> list[MethodConfig]:
    """The steps `slimformer factorize` runs: the method's config, then the factorized token
    embedding when embedding_rank is given."""
    steps = [factorize_config(method, ratio, rank, allocation, group)]
    return steps + [EmbeddingFactorConfig(rank=embedding_rank)] if embedding_rank else steps


def factorize_config(method: str, ratio: float = 0.8, rank: int = 0, allocation: str = "uniform",
                     group: int = 2) -> MethodConfig:
    """The config of one factorize method from the command's options."""
    from ..core.errors import ConfigError

    if method not in METHOD_CONFIGS:
        raise ConfigError(f"unknown factorize method {method!r}; accepted: {', '.join(METHOD_CONFIGS)}")
    cls = METHOD_CONFIGS[method]
    if method == "share_layers":
        return cls(group=group)
    if method == "basis_sharing":
        return cls(ratio=ratio, group=group)
    return cls(ratio=ratio, rank=rank, allocation=allocation)


__all__ = ["factorize_", "factorize_config", "factorize_steps", "SvdConfig", "FwsvdConfig", "AsvdConfig", "SvdLlmConfig",
           "EmbeddingFactorConfig", "ShareLayersConfig", "BasisSharingConfig", "LowRankLinear", "FactorizedEmbedding"]
