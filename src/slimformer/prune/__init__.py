"""Pruning: sparsity (magnitude, Wanda, SparseGPT; unstructured or N:M; stored compactly) and
structure (attention heads, FFN neurons, whole layers; physically removed)."""
from __future__ import annotations

from ..core.config import MethodConfig, apply_method
from ..models.hooks import register_module_type
from .configs import (FFNPruningConfig, GradualMagnitudeConfig, GroupLassoConfig, HeadPruningConfig, LayerDropConfig,
                      MagnitudeConfig, MovementConfig, SparseGPTConfig, WandaConfig)
from . import during_training as _during  # noqa: F401  (registers movement, gradual_magnitude, group_lasso)
from .neurons import NeuronMasking
from .importance import IMPORTANCE
from .modules import SparseLinear, restore_sparse_linear
from .sparsity import magnitude, sparsegpt, wanda
from .structured import drop_layers, prune_ffn, prune_heads
from .training import GradualMagnitude, GroupLasso, MovementPruning, cubic_sparsity

register_module_type("sparse_linear", restore_sparse_linear)


def prune_config(method: str | None = None, structure: str | None = None, amount: float | None = None,
                 count: int | None = None, pattern: str = "", scope: str = "layer", importance: str | None = None,
                 bits: int = 0) -> MethodConfig:
    """The config `slimformer prune` builds from its options (one of method / structure)."""
    from ..core.errors import ConfigError

    if bool(method) == bool(structure):
        raise ConfigError("give one of --method (magnitude, wanda, sparsegpt) or --structure (heads, ffn, layers)")
    if method:
        if importance or count:
            raise ConfigError("--importance and --count apply to --structure, not --method")
        if bits and method != "sparsegpt":
            raise ConfigError(f"--bits {bits} (joint sparse + int quantization) needs --method sparsegpt")
        kw = dict(amount=0.5 if amount is None else amount, pattern=pattern)
        if method == "magnitude":
            return MagnitudeConfig(scope=scope, **kw)
        if scope != "layer":
            raise ConfigError(f"--scope global applies to magnitude pruning; {method} prunes per layer")
        return WandaConfig(**kw) if method == "wanda" else SparseGPTConfig(bits=bits, **kw)
    if pattern or bits:
        raise ConfigError("--pattern and --bits apply to --method (sparsity), not --structure")
    if structure == "layers":
        return LayerDropConfig(count=count or 0, amount=0.0 if count else (amount or 0.0),
                               importance=importance or "block_influence")
    if count:
        raise ConfigError("--count applies to --structure layers")
    cls = HeadPruningConfig if structure == "heads" else FFNPruningConfig
    return cls(amount=0.25 if amount is None else amount, importance=importance or "magnitude", scope=scope)


def prune_(model, config: MethodConfig, data=None) -> list[str]:
    """Prune `model` (a SlimModel) in place with `config`; `data`: calibration texts (Wanda,
    SparseGPT, data-based importance scores). The step and its per-layer details are recorded
    in `model.meta["steps"]`. Returns warnings."""
    return apply_method(model, config, data).warnings


__all__ = ["prune_", "prune_config", "MagnitudeConfig", "WandaConfig", "SparseGPTConfig", "HeadPruningConfig", "FFNPruningConfig",
           "LayerDropConfig", "MovementConfig", "GradualMagnitudeConfig", "GroupLassoConfig", "NeuronMasking", "SparseLinear", "IMPORTANCE", "GradualMagnitude", "MovementPruning", "GroupLasso",
           "cubic_sparsity"]
