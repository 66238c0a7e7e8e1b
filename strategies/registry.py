"""Strategy registry: `@register(axis, name)` for in-tree plugins, the entry-point group
`mtlbench.strategies` for external packages.

A strategy class carries a typed `Options` dataclass; `make_options` validates a user's options
against it once (tasks.typed: unknown key -> nearest valid name, types, the Options' own ranges), so
a typo never silently falls back to a default, and `build` constructs the class from the result.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from mtlbench.tasks.errors import UserError, nearest
from mtlbench.tasks.typed import from_table

AXES = ("sampler", "combiner", "regularizer", "freezing")
# In-tree plugins live one module each in these packages and are discovered, not listed.
PLUGIN_PACKAGES = ("mtlbench.strategies.samplers", "mtlbench.strategies.combiners", "mtlbench.strategies.regularizers",
                   "mtlbench.strategies.freezing")
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


def available(axis: str) -> dict[str, type]:
    _load_all()
    return dict(sorted(_REGISTRY[axis].items()))


def get(axis: str, name: str, where: str | None = None) -> type:
    registered = available(axis)
    if name not in registered:
        raise UserError(f"{where + ': ' if where else ''}unknown {axis} '{name}'{nearest(name, registered)}; "
                        f"available: {', '.join(registered)}")
    return registered[name]


def build(axis: str, name: str, options, *args, where: str | None = None, **kwargs):
    """The one way a strategy is made: the class constructed with its validated `options` (the
    Options instance `make_options` gave, or a dict, validated here) and `args`; a ValueError the
    constructor raises about its options (a task name the run does not have) becomes a UserError
    naming `where`."""
    where = where or f"{axis} '{name}'"
    cls = get(axis, name, where)
    if not isinstance(options, cls.Options):
        options = make_options(cls, options, where)
    try:
        return cls(options, *args, **kwargs)
    except ValueError as error:
        raise UserError(f"{where}: {error}") from None
    except UserError as error:  # strategies name their option as "axis.option": keep one axis in the path
        text = str(error)
        head = where.rsplit(".", 1)[0] if where.endswith(f".{axis}") and text.startswith(f"{axis}.") else where
        raise UserError(f"{head}: {text}") from None


def scalarisation() -> str:
    """The name of the combiner that is the static-weight sum (its class sets `scalarisation`)."""
    found = [name for name, cls in available("combiner").items() if getattr(cls, "scalarisation", False)]
    if len(found) != 1:
        raise UserError(f"the scalarisation front needs exactly one combiner with scalarisation = True, found "
                        f"{found or 'none'}")
    return found[0]


def make_options(cls: type, options: dict[str, Any], where: str):
    """Validate `options` against `cls.Options`; returns the Options instance."""
    def unknown(key: str, fields: list[str]) -> str:
        return (f"{where}: unknown option '{key}'{nearest(key, fields)} for {cls.axis} '{cls.name}'"
                + (f"; options: {', '.join(fields)}" if fields else "; it takes no options"))
    return from_table(cls.Options, options, where, unknown)


def describe(cls: type) -> str:
    """First line of the strategy's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
