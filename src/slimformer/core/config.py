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


@dataclasses.dataclass(frozen=True)
class Traits:
    """What the pipeline needs to know about a method, declared where it is registered.

    artifact: turns the model into a deployable artifact (an export): the last step of a recipe.
    trains: trains; keeps checkpoints in its step folder, so an interrupted run resumes.
    needs_original: reads the model as it was before the recipe (`run.original()`, e.g. a teacher).
    needs_calibration: calibrates on `run.calibration`. changes_shapes: removes or resizes layers,
    heads or neurons. bytes_only: saves bytes on disk, not compute (the report says "size only").
    wraps_training: acts during the next training step of the recipe (training-time pruning): it
    must be followed by a step that trains. portable: what it leaves can be written to plain formats
    (ONNX LM graphs, GGUF, compressed-tensors); False for run-time transforms only slimformer's
    modules compute (a Hadamard rotation). layer_local: works on one Transformer layer at a time
    through the shared layer loops (`models/sequential.py`), so it runs on a model streamed from its
    shards (`load(folder, stream=True)`) without loading it whole."""

    artifact: bool = False
    trains: bool = False
    needs_original: bool = False
    needs_calibration: bool = False
    changes_shapes: bool = False
    bytes_only: bool = False
    wraps_training: bool = False
    portable: bool = True
    layer_local: bool = False

    def names(self) -> list[str]:
        default = Traits()
        return [f.name if getattr(self, f.name) is True else f"not {f.name}"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(default, f.name)]


class _MethodEntry(typing.NamedTuple):
    config_cls: type
    handler: Callable
    traits: Traits
    check: Callable | None = None  # check(model, config): a ConfigError before any step of the recipe runs


METHODS: Registry[_MethodEntry] = Registry("method")


@dataclasses.dataclass
class Applied:
    """What a handler did: warnings for the user, a details dict (per-layer figures, searched
    values, ...) that fills `StepRecord.details` and the model's per-step metadata, and, for a
    step that turns the model into another artifact (an ONNX export), that artifact as `model`."""

    warnings: list[str] = dataclasses.field(default_factory=list)
    details: dict = dataclasses.field(default_factory=dict)
    model: Any = None


def register_method(config_cls: type, handler: Callable | None = None, traits: Traits | None = None,
                    check: Callable | None = None):
    """Register `handler(model, config, run) -> Applied` for `config_cls` with its traits; as a
    decorator beside the handler: `@register_method(SvdConfig, traits=Traits(needs_calibration=True))`.
    check(model, config): what can be refused before any step runs (e.g. a loss the model's kind has
    no output for), so a recipe fails in seconds instead of after its first steps."""
    def deco(fn: Callable) -> Callable:
        METHODS.register(config_cls.method, _MethodEntry(config_cls, fn, traits or Traits(), check))
        return fn

    return deco(handler) if handler is not None else deco


def handler_for(config: MethodConfig) -> Callable:
    return METHODS.get(config.method).handler


def traits_of(method) -> Traits:
    """The traits of a method (a name or a config)."""
    return METHODS.get(method if isinstance(method, str) else method.method).traits


def _as_slim(model):
    """A plain torch module (not a Hugging Face model) in a SlimModel shell, so the methods that need
    no architecture knowledge apply to it in place, as torchao's quantize_ does."""
    import torch

    if isinstance(model, torch.nn.Module) and getattr(model, "config", None) is None:
        from ..models.wrapper import SlimModel

        return SlimModel(model, None, "module", source=type(model).__name__)
    return model


def apply_method(model, config: MethodConfig, run=None, record: bool = True) -> Applied:
    """Run `config`'s handler on `model` (a SlimModel, changed in place) with `run` (a Run, or
    calibration texts, or None). With `record`, the step (its config and details) is appended to
    `model.meta["steps"]`, one entry per step, so the same method twice keeps both (a step that
    returns another artifact, an export, records itself there)."""
    from .run import Run

    if not isinstance(config, MethodConfig):
        raise ConfigError(f"expected a method config (e.g. slimformer.Int8DynamicConfig()), got {type(config).__name__}")
    model = _as_slim(model)
    out = handler_for(config)(model, config, Run.of(run))
    if out is None:
        out = Applied()
    elif isinstance(out, list):
        out = Applied(warnings=out)
    if record and out.model is None and isinstance(getattr(model, "meta", None), dict):
        model.meta.setdefault("steps", []).append({**config.to_dict(), "details": out.details})
    from ..models.guard import guard_plain_save

    guard_plain_save(model)
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
