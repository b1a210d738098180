"""Command-line options generated from a pydantic schema: one option per field, with the
field's description as help and its effective default shown, so that a new config field is
one edit (in ``TrainConfig``) and appears in ``--help``, in YAML files and on the command line.

Every generated option defaults to ``None`` ("not given"), so that a flag left out never masks
the value of a ``--config`` file; the help still shows the schema's default.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def _plain_type(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """``(type the option parses, allowed values)`` of a field annotation: ``X | None`` is
    ``X``, a ``Literal`` is text with its choices, a mapping is YAML text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _plain_type(args[0])
    if origin is typing.Literal:
        return str, tuple(str(a) for a in args)
    if origin is dict or annotation is dict:
        return str, ()
    if annotation in (bool, int, float, str, Path):
        return annotation, ()
    raise TypeError(f"no command-line form for a field of type {annotation!r}")


def _shown_default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


def schema_parameters(schema: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``schema``, annotated for typer.

    A field's ``json_schema_extra={"short": "-b"}`` adds a short option name; booleans get
    ``--name/--no-name``.
    """
    params = []
    for name, field in schema.model_fields.items():
        kind, choices = _plain_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}" if kind is bool else flag]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if "short" in extra:
            decls.append(str(extra["short"]))
        text = (field.description or name.replace("_", " ")).rstrip(".")
        if choices:
            text += f"; one of: {', '.join(choices)}"
        option = typer.Option(*decls, help=text + ".", show_default=_shown_default(field))
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    return params


def with_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """``func`` (which takes ``**values``) presented to typer with ``params`` first, then
    the keyword parameters of its own signature."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is p.KEYWORD_ONLY]
    func.__signature__ = inspect.Signature([*params, *own])  # type: ignore[attr-defined]
    return func
