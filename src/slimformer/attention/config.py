"""The `attention` method: swap an attention implementation into a model (a recipe step)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import Applied, MethodConfig, Traits, register_method
from ..models.hooks import register_meta_hook
from .hf import set_attention_
from .registry import ATTENTION, check_options


@dataclass(frozen=True)
class AttentionConfig(MethodConfig):
    """impl: an attention implementation (eager, sdpa, sliding_window, block_sparse, lsh, linear,
    nystrom, pooled); options: its keywords, e.g. {"window": 64} (see each implementation's
    docstring in slimformer.attention.kernels). No training: the model's weights are unchanged."""

    method = "attention"
    impl: str = "sdpa"
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        self._check_choice("impl", ATTENTION.names())
        if not isinstance(self.options, dict):
            raise_options = type(self.options).__name__
            from ..core.errors import ConfigError
            raise ConfigError(f"AttentionConfig.options must be a mapping of option -> value, got {raise_options}")
        check_options(self.impl, self.options)


@register_method(AttentionConfig, traits=Traits())
def _apply(sm, cfg: AttentionConfig, run=None) -> Applied:
    key = set_attention_(sm, cfg.impl, **cfg.options)
    return Applied([f"attention: {cfg.impl}" + (f" {cfg.options}" if cfg.options else "")],
                   {"impl": cfg.impl, "options": dict(cfg.options), "transformers_key": key})


register_meta_hook("attention", lambda sm, v: set_attention_(sm, v["impl"], **v.get("options", {})))
