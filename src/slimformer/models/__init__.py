from .wrapper import SlimModel, Pooling, KINDS
from .loading import load, default_model_path, DEFAULT_MODEL
from .saving import save
from .hooks import RESTORE_HOOKS

__all__ = ["SlimModel", "Pooling", "KINDS", "load", "save", "default_model_path", "DEFAULT_MODEL", "RESTORE_HOOKS"]
