from .errors import SlimformerError, UnsupportedArchitectureError, DataError, ConfigError
from .registry import Registry
from .config import MethodConfig, METHODS, register_method, config_from_dict
from .targets import select_modules

__all__ = [
    "SlimformerError", "UnsupportedArchitectureError", "DataError", "ConfigError",
    "Registry", "MethodConfig", "METHODS", "register_method", "config_from_dict",
    "select_modules",
]
