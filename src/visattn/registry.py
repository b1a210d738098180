"""Name -> builder registries for attention mechanisms, models and training tasks.

A registry maps a short name to a class or factory function. Registering a name twice
raises at import time, and looking up an unknown name raises ``KeyError`` listing the valid
names, so a typo on the command line reads as a clear message instead of a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry:
    """An ordered mapping of names to builders (classes or factory functions).

    Example:
        >>> LAYERS = Registry("layer")
        >>> @LAYERS.register("identity")
        ... class Identity: ...
        >>> LAYERS.get("identity") is Identity
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a builder under ``name`` (lower case, no spaces)."""
        if not name or name != name.lower() or " " in name:
            raise ValueError(f"{self.kind} name must be lower case without spaces, got {name!r}")

        def decorate(builder: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = builder
            return builder

        return decorate

    def get(self, name: str) -> Callable[..., Any]:
        """Return the builder registered as ``name``; ``KeyError`` lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


ATTENTION = Registry("attention")
MODELS = Registry("model")
DETECTORS = Registry("detector")
EXPLAINERS = Registry("explanation method")
TASKS = Registry("task")
