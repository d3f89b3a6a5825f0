"""Errors users see. Each message names what was wrong and what is accepted."""


class SlimformerError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class UnsupportedArchitectureError(SlimformerError):
    pass


class DataError(SlimformerError, ValueError):
    pass


class ConfigError(SlimformerError, ValueError):
    pass


class ModelLoadError(SlimformerError):
    pass
