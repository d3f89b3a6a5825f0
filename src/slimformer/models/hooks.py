"""Module restore registry: methods that swap modules (quantization, rotation, ...) register, per
module *type* they record, how to rebuild such a module on a freshly built model before the saved
tensors are loaded into it.

A method records `{"type": NAME, ...}` for each swapped module under
`SlimModel.meta["modules"][GROUP][module name]` (saved in `slimformer.json`); on load every
record is rebuilt by `MODULE_TYPES.get(NAME)`, a `ModuleType(build, late)`:
`build(model, name, info) -> nn.Module | None` returns the module to put at `name` (None: it put
it in place itself). `late` types are built after all others (a head that points at a rebuilt
embedding).
"""
from __future__ import annotations

import typing
from typing import Callable

from ..core.registry import Registry


class ModuleType(typing.NamedTuple):
    build: Callable
    late: bool = False


MODULE_TYPES: Registry[ModuleType] = Registry("saved module type")


def register_module_type(name: str, build: Callable, late: bool = False) -> None:
    MODULE_TYPES.register(name, ModuleType(build, late))


def restore_modules(model, records: dict) -> None:
    """Rebuild every recorded module: records = {group: {module name: info with "type"}}."""
    from ..core.errors import ModelLoadError
    from .surgery import set_module

    items = [(name, info) for group in records.values() for name, info in group.items()]
    for name, info in items:
        if info.get("type") not in MODULE_TYPES:
            raise ModelLoadError(f"slimformer.json records module {name!r} of type {info.get('type')!r}, which this "
                                 f"version cannot rebuild; known: {', '.join(MODULE_TYPES.names())}")
    items.sort(key=lambda kv: MODULE_TYPES.get(kv[1]["type"]).late)
    for name, info in items:
        new = MODULE_TYPES.get(info["type"]).build(model, name, info)
        if new is not None:
            set_module(model, name, new)


# keys of `SlimModel.meta` that a method re-applies after loading (the attention implementation):
# `fn(slim_model, value)`, called once the model and tokenizer are loaded
META_HOOKS: Registry[Callable] = Registry("metadata hook")


def register_meta_hook(key: str, fn: Callable) -> None:
    META_HOOKS.register(key, fn)


def apply_meta_hooks(sm) -> None:
    for key in META_HOOKS.names():
        if key in sm.meta:
            META_HOOKS.get(key)(sm, sm.meta[key])


# a module that several names share (cross-layer weight sharing): recorded under its other names
# as {"type": "shared", "of": the first name}; saved once, and the same module again after a load
SHARED = "shared"


def _build_shared(model, name, info):
    from .surgery import mark_shared

    mark_shared(model)
    return model.get_submodule(info["of"])


register_module_type(SHARED, _build_shared, late=True)


def shared_aliases(meta: dict) -> list[str]:
    """The module names recorded as another name's module (their tensors are saved once)."""
    return [n for group in (meta or {}).get("modules", {}).values() for n, info in group.items()
            if isinstance(info, dict) and info.get("type") == SHARED]
