"""Typed settings from TOML-like tables: the one coercion every layer uses (a suite's [train],
[cost], [synthetic] ... sections and every strategy's `Options`).

A table becomes an instance of a dataclass: every key must be a field (else an error naming the
nearest), every value the field's type (an integer where a float is declared is taken as that
float; a bool is never an int; a float must be finite; a `Literal[...]` is one of its choices; a
dict, list or tuple field takes a table or a list), then the dataclass's own `__post_init__`
checks ranges, and a ValueError or TypeError it raises names `where`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin, get_type_hints

from mtlbench.tasks.errors import UserError, nearest


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` as the type `annotation` declares, or an error naming `where` (the key's place)."""
    if get_origin(annotation) is Literal:  # a closed set of choices, declared once in the type
        choices = get_args(annotation)
        if value not in choices:
            name = where.rsplit(".", 1)[-1]
            raise UserError(f"{where}: {name} must be one of {choices}, got {value!r}"
                            f"{nearest(str(value), [str(c) for c in choices])}")
        return value
    origin = get_origin(annotation)
    if origin in (dict, list, tuple) and not isinstance(value, list if origin is tuple else origin):
        kind = {dict: "a table", list: "a list", tuple: "a list"}[origin]
        raise UserError(f"{where}: expected {kind}, got {value!r}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise UserError(f"{where}: expected int, got {value!r}")
    return value


def from_table(cls: type, table: Any, where: str, unknown_key: Callable[[str, list[str]], str] | None = None):
    """An instance of the dataclass `cls` from `table`. `unknown_key(key, fields)` words the error
    for a key that is not a field (default: "WHERE: unknown key 'KEY' (did you mean ...?)")."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    hints = get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise UserError(unknown_key(key, fields) if unknown_key
                            else f"{where}: unknown key '{key}'{nearest(key, fields)}")
        values[key] = coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:  # a range check in the dataclass's __post_init__
        raise UserError(f"{where}: {error}") from None
