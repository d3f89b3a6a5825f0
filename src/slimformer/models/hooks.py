"""Restore hooks: methods that change module types (quantization, ...) register how to rebuild
those modules on an empty model before saved weights are loaded into it.

A hook is `restore(model: nn.Module, info) -> None`, keyed by the name under which the method
stored `info` in `SlimModel.meta` (and so in `slimformer.json`).
"""
from __future__ import annotations

from ..core.registry import Registry

RESTORE_HOOKS: Registry = Registry("restore hook")
