"""Method configs: frozen dataclasses with typed fields, validation and a version.

A method is a config class registered under a name plus a handler registered for it. Recipes
name the method and give its fields; unknown fields are errors that name the field.
"""
from __future__ import annotations

import contextvars
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

# the model as it was before the recipe started (compress sets it): a `distill` step that
# recovers a pruned model uses it as the teacher
ORIGINAL_MODEL: contextvars.ContextVar = contextvars.ContextVar("slimformer_original_model", default=None)


@dataclasses.dataclass
class Applied:
    """What a handler did: warnings for the user, a details dict (per-layer figures, searched
    values, ...) that fills `StepRecord.details` and the model's per-step metadata, and, for a
    step that turns the model into another artifact (an ONNX export), that artifact as `model`."""

    warnings: list[str] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)
    model: Any = None


def register_method(config_cls: type, handler: Callable) -> None:
    """Register `handler(model, config, data) -> Applied` for `config_cls`."""
    METHODS.register(config_cls.method, _MethodEntry(config_cls, handler))


def handler_for(config: MethodConfig) -> Callable:
    return METHODS.get(config.method).handler


def apply_method(model, config: MethodConfig, data=None, record: bool = True) -> Applied:
    """Run `config`'s handler on `model` (a SlimModel, changed in place). With `record`, the step
    (its config and details) is appended to `model.meta["steps"]`, one entry per step, so the same
    method twice keeps both (a step that returns another artifact, an export, records itself there)."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(f"expected a method config (e.g. slimformer.Int8DynamicConfig()), got {type(config).__name__}")
    out = handler_for(config)(model, config, data)
    if out is None:
        out = Applied()
    elif isinstance(out, list):
        out = Applied(warnings=out)
    if record and out.model is None and isinstance(getattr(model, "meta", None), dict):
        model.meta.setdefault("steps", []).append({**config.to_dict(), "details": out.details})
    return out


def step_details(model, method: str) -> dict:
    """The details of the last step of `method` recorded on `model` ({} if none)."""
    for step in reversed(getattr(model, "meta", {}).get("steps", [])):
        if step.get("method") == method:
            return step.get("details", {})
    return {}


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
