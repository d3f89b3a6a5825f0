"""Target selection: which modules a method acts on.

A pattern is a module's full name (`encoder.layer.0.attention.self.query`), a class name
(`Linear`), or `re:` followed by a regular expression matched against the full name.
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn


def _matches(name: str, module: nn.Module, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return name == pattern or type(module).__name__ == pattern


def select_modules(
    model: nn.Module,
    targets: Iterable[str],
    ignore: Iterable[str] = (),
    default: tuple[type, ...] = (nn.Linear,),
) -> list[tuple[str, nn.Module]]:
    """Return (name, module) pairs matched by targets (or of the default classes) minus ignore."""
    targets = list(targets)
    ignore = list(ignore)
    out = []
    for name, mod in model.named_modules():
        if not name:
            continue
        hit = any(_matches(name, mod, p) for p in targets) if targets else isinstance(mod, default)
        if hit and not any(_matches(name, mod, p) for p in ignore):
            out.append((name, mod))
    return out


def module_part(name: str) -> str:
    """The part of the model a tensor name belongs to: up to its layer index (`encoder.layer.3`),
    else its first two components (`embeddings.word_embeddings`)."""
    parts = name.split(".")[:-1]
    idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return ".".join(parts[: idx + 1] if idx is not None else parts[:2]) or name
