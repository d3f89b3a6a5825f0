"""String-keyed registries of callables (importance scores, losses, observers, ...)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """`reg.register("x", fn)` or as a decorator `@reg.register("x")`."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def deco(o: T) -> T:
            self._add(name, o)
            return o

        return deco

    def _add(self, name: str, obj: T) -> None:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[key] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown {self.what} {name!r}; accepted: {', '.join(sorted(self._items)) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
