from .errors import SlimformerError, UnsupportedArchitectureError, DataError, ConfigError
from .registry import Registry
from .config import MethodConfig, METHODS, Applied, apply_method, register_method, config_from_dict, step_details
from .targets import select_modules

__all__ = [
    "SlimformerError", "UnsupportedArchitectureError", "DataError", "ConfigError",
    "Registry", "MethodConfig", "METHODS", "Applied", "apply_method", "register_method", "config_from_dict",
    "step_details",
    "select_modules",
]
