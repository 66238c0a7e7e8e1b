"""Strategy registry: `@register(axis, name)` for in-tree plugins, the entry-point group
`mtlbench.strategies` for external packages.

A strategy class carries a typed `Options` dataclass; `build` validates a user's options against it
(unknown key -> nearest valid name) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Literal, get_args, get_origin, get_type_hints

from bench import errors
from bench.errors import UserError

AXES = ("sampler", "combiner", "regularizer", "freezing")
# In-tree plugins live one module each in these packages and are discovered, not listed.
PLUGIN_PACKAGES = ("strategies.samplers", "strategies.combiners", "strategies.regularizers", "strategies.freezing")
ENTRY_POINT_GROUP = "mtlbench.strategies"

_REGISTRY: dict[str, dict[str, type]] = {axis: {} for axis in AXES}
_DISCOVERED_MODULES: set[str] = set()  # in-tree and entry-point modules: a fresh process finds them too
_loaded = False


def register(axis: str, name: str):
    """Class decorator: make a strategy available under `name` on `axis`."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; axes: {AXES}")

    def decorate(cls):
        if name in _REGISTRY[axis] and _REGISTRY[axis][name] is not cls:
            raise ValueError(f"{axis} '{name}' registered twice ({_REGISTRY[axis][name]!r} and {cls!r})")
        if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
            raise TypeError(f"{cls.__name__} must define a dataclass `Options`")
        cls.name = name
        cls.axis = axis
        _REGISTRY[axis][name] = cls
        return cls

    return decorate


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in PLUGIN_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")  # runs its @register
            _DISCOVERED_MODULES.add(f"{package_name}.{module.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()  # importing the module runs its @register decorators
        _DISCOVERED_MODULES.add(getattr(entry, "module", ""))


def discoverable(cls: type) -> bool:
    """Whether a fresh process (a worker of a parallel run) finds this strategy by itself: true for
    in-tree modules and entry points, false for a class registered at run time (a notebook cell)."""
    _load_all()
    return cls.__module__ in _DISCOVERED_MODULES


OPTION_SYNONYMS = {"eps": "epsilon", "radius": "epsilon", "temp": "temperature", "tau": "temperature"}


def nearest(name: str, choices) -> str:
    synonym = OPTION_SYNONYMS.get(str(name).lower())
    return f" (did you mean '{synonym}'?)" if synonym in choices else errors.nearest(name, choices)


def available(axis: str) -> dict[str, type]:
    _load_all()
    return dict(sorted(_REGISTRY[axis].items()))


def get(axis: str, name: str, where: str | None = None) -> type:
    registered = available(axis)
    if name not in registered:
        raise UserError(f"{where + ': ' if where else ''}unknown {axis} '{name}'{nearest(name, registered)}; "
                        f"available: {', '.join(registered)}")
    return registered[name]


def build(axis: str, name: str, options: dict[str, Any], *args, where: str | None = None, **kwargs):
    """The one way a strategy is made: its options validated (`make_options`), then the class
    constructed with `args`; a ValueError the constructor raises about its options (a task name the
    run does not have) becomes a UserError naming `where`."""
    where = where or f"{axis} '{name}'"
    cls = get(axis, name, where)
    validated = make_options(cls, options, where)
    try:
        return cls(validated, *args, **kwargs)
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None
    except UserError as error:  # strategies name their option as "axis.option": keep one axis in the path
        text = str(error)
        head = where.rsplit(".", 1)[0] if where.endswith(f".{axis}") and text.startswith(f"{axis}.") else where
        raise UserError(f"{head}: {text}") from None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    if get_origin(annotation) is Literal:  # a closed set of choices, declared once in the Options type
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
        return float(value)
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}")
    if annotation is int and isinstance(value, bool):
        raise UserError(f"{where}: expected int, got {value!r}")
    return value


def make_options(cls: type, options: dict[str, Any], where: str):
    """Validate `options` against `cls.Options`; returns the Options instance."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    hints = get_type_hints(cls.Options)
    values = {}
    for key, value in options.items():
        if key not in fields:
            raise UserError(f"{where}: unknown option '{key}'{nearest(key, fields)} for {cls.axis} '{cls.name}'"
                            + (f"; options: {', '.join(fields)}" if fields else "; it takes no options"))
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"{where}: {error}") from None


def describe(cls: type) -> str:
    """First line of the strategy's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
