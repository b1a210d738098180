"""One way for every model to turn its ``attention=`` option into modules.

A model's ``attention`` is a registered mechanism name, a callable ``channels -> module``, or
``None`` for the network without attention; ``attention_options`` are the named mechanism's
keyword options. ``attention_factory`` checks both once, when the model is built, and returns
the function the model calls at each of its attention sites (or ``None``). Models never
compare mechanism names: what differs between sites (a Swin stage's head count, every second
block's window shift) is handed to the factory as *settings*, and what a model prefers (a
mixer that does not add its own input) as *defaults*; each reaches a mechanism only when its
constructor has an option of that name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from torch import nn

from ..attention import AttentionSpec
from ..registry import ATTENTION

__all__ = ["AttentionFactory", "attention_factory", "identity_if_none", "mechanism_class"]

LAYOUTS = ("feature-map", "token")


def mechanism_class(name: str, layout: str, *, model: str) -> type[nn.Module]:
    """The class a registered name stands for in a model whose sites have ``layout``:
    the mechanism itself, or its ``token_form`` where the model mixes tokens.

    Raises ``KeyError`` (listing the names) for an unknown name and ``ValueError`` when the
    mechanism has no form for that layout.
    """
    cls = ATTENTION.get(name)
    own = getattr(cls, "layout", "feature-map")
    if own == layout:
        return cls
    form = getattr(cls, "token_form", None) if layout == "token" else None
    if form is not None:
        return form
    fitting = [n for n in ATTENTION.names() if _has_layout(ATTENTION.get(n), layout)]
    raise ValueError(
        f"{model} needs attention on {_SHAPES[layout]}; {name!r} works on {_SHAPES[own]}: use one of "
        f"{', '.join(fitting) or '(none)'}, or a callable channels -> module"
    )


_SHAPES = {"feature-map": "(B, C, H, W) feature maps", "token": "(B, N, C) tokens"}


def _has_layout(cls: type, layout: str) -> bool:
    own = getattr(cls, "layout", "feature-map")
    return own == layout or (layout == "token" and getattr(cls, "token_form", None) is not None)


def _options_of(cls: type) -> set[str] | None:
    """Keyword options of ``cls``'s constructor; None when it takes ``**kwargs``."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


class AttentionFactory:
    """Builds one model's attention modules; made by ``attention_factory``.

    Call it as ``factory(channels, **settings)`` at each attention site; ``settings`` are the
    values the model sets there (names declared to ``attention_factory`` as ``sets``).
    """

    def __init__(
        self,
        spec: AttentionSpec,
        options: Mapping[str, Any],
        *,
        model: str,
        layout: str,
        sets: Collection[str],
        defaults: Mapping[str, Any],
    ) -> None:
        self.spec, self.model, self.layout, self.sets = spec, model, layout, frozenset(sets)
        self.options, self.defaults = dict(options), dict(defaults)
        self.cls: type[nn.Module] | None = None
        self.accepted: set[str] | None = None
        if isinstance(spec, str):
            self.cls = mechanism_class(spec, layout, model=model)
            self.accepted = _options_of(self.cls)
            unknown = [] if self.accepted is None else sorted(self.options.keys() - self.accepted)
            if unknown:
                raise ValueError(
                    f"attention_options {', '.join(map(repr, unknown))} are not options of {spec!r} "
                    f"({self.cls.__name__}); its options: {', '.join(sorted(self.accepted or ()))}"
                )

    def __call__(self, channels: int, **settings: Any) -> nn.Module:
        """The attention module for a ``channels``-wide site of the model."""
        stray = sorted(settings.keys() - self.sets)
        if stray:
            raise TypeError(f"{self.model} sets undeclared attention settings {stray}")
        if self.cls is None:
            module = self.spec(channels)  # type: ignore[operator]
            own = getattr(module, "layout", None)
            if isinstance(module, nn.Module) and own is not None and own != self.layout:
                raise ValueError(
                    f"attention callable returned a {type(module).__name__} for {_SHAPES[own]}; "
                    f"{self.model} needs attention on {_SHAPES[self.layout]}"
                )
            return module
        given = {**self.defaults, **self.options, **settings}  # options may not name a setting
        return self.cls(
            channels, **{k: v for k, v in given.items() if self.accepted is None or k in self.accepted}
        )


def attention_factory(
    attention: AttentionSpec | None,
    options: Mapping[str, Any] | None = None,
    *,
    model: str,
    layout: str = "feature-map",
    sets: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> AttentionFactory | None:
    """Check a model's ``attention`` and ``attention_options``; return the factory of its
    attention modules, or ``None`` when ``attention`` is ``None`` (no attention).

    Args:
        attention: a registered mechanism name, a callable ``channels -> module``, or ``None``.
        options: ``attention_options``: keyword options of a named mechanism (they override
            ``defaults``; unknown ones raise ``ValueError`` listing the mechanism's options).
        model: the model's name, for error messages.
        layout: what the model's sites hand the module: ``"feature-map"`` ``(B, C, H, W)`` or
            ``"token"`` ``(B, N, C)``; a registered name must have that layout or, for
            ``"token"``, a ``token_form``.
        sets: names of the settings the model passes at each site; ``attention_options`` may
            not name them.
        defaults: the model's preferred values of some options, overridable by ``options``.

    Settings and defaults reach a registered mechanism only where its constructor has an
    option of that name; a callable receives the channel count alone.

    Example:
        >>> make = attention_factory("bot", {"max_distance": 15}, model="BoTNet",
        ...                          defaults={"heads": 4, "residual": False})
        >>> make(512).heads, make(512).max_distance
        (4, 15)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"attention_options must be a mapping of keyword options, got {options!r}")
    options = dict(options or {})
    if attention is None:
        if options:
            raise ValueError("attention_options given but attention is None")
        return None
    if not isinstance(attention, str) and not callable(attention):
        raise ValueError(
            f"attention must be a registered name, a callable channels -> module or None, got {attention!r}"
        )
    if not isinstance(attention, str) and options:
        raise ValueError("attention_options are only accepted with a registered attention name")
    reserved = sorted(set(sets) & options.keys())
    if reserved:
        raise ValueError(f"attention_options may not set {', '.join(reserved)}: the model sets them")
    return AttentionFactory(
        attention, options, model=model, layout=layout, sets=sets, defaults=defaults or {}
    )


def identity_if_none(factory: AttentionFactory | None) -> Callable[[int], nn.Module]:
    """``channels -> module`` for models whose attention slot becomes ``nn.Identity`` without
    attention (the same network, minus the attention)."""
    if factory is None:
        return lambda channels: nn.Identity()
    return factory
