from .wrapper import SlimModel, Pooling, KINDS
from .loading import load, default_model_path, DEFAULT_MODEL
from .saving import save
from .hooks import MODULE_TYPES, register_module_type

__all__ = ["SlimModel", "Pooling", "KINDS", "load", "save", "default_model_path", "DEFAULT_MODEL", "MODULE_TYPES",
           "register_module_type"]
