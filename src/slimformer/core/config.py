"""Method configs: frozen dataclasses with typed fields, validation and a version.

A method is a config class registered under a name plus a handler registered for it. Recipes
name the method and give its fields; unknown fields are errors that name the field.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, ClassVar

from .errors import ConfigError
from .registry import Registry


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method config. Subclasses are frozen dataclasses.

    targets: which modules to act on: module names, class names or `re:` patterns; empty = the
    method's default. ignore: modules to leave alone (same forms).
    """

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # tuple fields (targets, ignore, ...) accept a str or a list
            if not isinstance(f.default, tuple):
                continue
            v = getattr(self, f.name)
            if isinstance(v, str):
                object.__setattr__(self, f.name, (v,))
            elif isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    def to_dict(self) -> dict[str, Any]:
        d = {"method": self.method, "version": self.version}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    # helpers for validate()
    def _check_range(self, name: str, lo: float, hi: float, lo_open=False, hi_open=False) -> None:
        v = getattr(self, name)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok_lo = number and (v > lo if lo_open else v >= lo)
        ok_hi = number and (v < hi if hi_open else v <= hi)
        if not (ok_lo and ok_hi):
            lb = "(" if lo_open else "["
            rb = ")" if hi_open else "]"
            raise ConfigError(f"{type(self).__name__}.{name}={v!r} is out of range; accepted: {lb}{lo}, {hi}{rb}")

    def _check_bool(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(f"{type(self).__name__}.{name}={v!r} must be true/false")

    def _check_choice(self, name: str, choices) -> None:
        v = getattr(self, name)
        if v not in choices:
            raise ConfigError(
                f"{type(self).__name__}.{name}={v!r} is not accepted; accepted: {', '.join(map(str, choices))}"
            )


class _MethodEntry(typing.NamedTuple):
    config_cls: type
    handler: Callable


METHODS: Registry[_MethodEntry] = Registry("method")


def register_method(config_cls: type, handler: Callable) -> None:
    """Register `handler(model, config, data) -> list[str] warnings` for `config_cls`."""
    METHODS.register(config_cls.method, _MethodEntry(config_cls, handler))


def handler_for(config: MethodConfig) -> Callable:
    return METHODS.get(config.method).handler


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(d: dict[str, Any]) -> MethodConfig:
    """Build a config from a recipe step: {"method": name, field: value, ...}."""
    if not isinstance(d, dict) or "method" not in d:
        raise ConfigError(f"a recipe step must be a mapping with a 'method' key; got {d!r}")
    d = dict(d)
    name = d.pop("method")
    d.pop("version", None)
    cls = METHODS.get(str(name)).config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in fields:
            raise ConfigError(
                f"unknown key {k!r} for method {name!r}; accepted: {', '.join(sorted(fields))}"
            )
    kwargs = {k: _coerce(v, hints.get(k)) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"method {name!r}: {e}") from None
