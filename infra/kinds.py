"""Installed kinds into the registry of kinds (`schemas.kinds.KINDS`), the same way in every process.

A user package declares its kinds once, as Structs in a module of their own, named by the entry point group
`hypercard.kinds` (or, for a module that is not installed, by HC_KINDS: module names, comma-separated):

    [project.entry-points."hypercard.kinds"]
    low_balance = "low_balance.kinds"
    [project.entry-points."hypercard.handlers"]
    low_balance = "low_balance.handlers"

The gateway imports only the kinds (no handler code, no database driver); the workers and the operator commands
import the handlers too (`workers.registry`), and every kind a handler is registered for is known as well."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import structlog

from schemas.events import Event
from schemas.kinds import KINDS, KindCollision

KINDS_ENTRY_POINT_GROUP = "hypercard.kinds"
log = structlog.get_logger("infra")


class ModuleLoadError(ImportError):
    """A user's module (HC_KINDS, HC_HANDLERS, an entry point) that could not be imported: one line naming it and the
    error, which every command prints as it exits (2)."""


def import_user_module(name: str, what: str) -> ModuleType:
    """Import a user's module (`what`: "kinds module", "handler module"); whatever importing it raises (a syntax
    error, an ImportError inside it, a handler refused at registration) is a ModuleLoadError naming it."""
    try:
        return importlib.import_module(name)
    except Exception as error:
        raise ModuleLoadError(f"cannot load {what} {name}: {_one_line(error)}") from error


def load_entry_point(entry_point: EntryPoint) -> Any:
    """What an entry point names; whatever importing it raises is a ModuleLoadError naming it."""
    try:
        return entry_point.load()
    except Exception as error:
        raise ModuleLoadError(
            f"cannot load the {entry_point.group} entry point {entry_point.name} ({entry_point.value}): "
            f"{_one_line(error)}"
        ) from error


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]


def module_names(values: Iterable[str]) -> list[str]:
    """Module names from settings and options, each of which may be a comma-separated list (`--handlers a,b`)."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def load_kinds(modules: Iterable[str] = (), *, use_entry_points: bool = True) -> list[str]:
    """Import `modules` (HC_KINDS) and every `hypercard.kinds` entry point (a module, or one Struct); register each
    kind they declare. The kinds added, sorted."""
    before = KINDS.kinds()
    for name in module_names(modules):
        declare_kinds(import_user_module(name, "kinds module"))
    if use_entry_points:
        for entry_point in entry_points(group=KINDS_ENTRY_POINT_GROUP):
            declare_kinds(load_entry_point(entry_point))
    added = sorted(KINDS.kinds() - before)
    if added:
        log.info("kinds loaded", kinds=added)
    return added


def declare_kinds(source: ModuleType | type[Event]) -> None:
    """Register one Struct, or every Struct with a tag that a module defines (not those it imports). A kind another
    Struct already declares is a ModuleLoadError naming both."""
    types = [source] if isinstance(source, type) else [v for v in vars(source).values() if _declared_in(v, source)]
    for event_type in types:
        declare_kind(event_type)


def declare_kind(event_type: type[Event]) -> None:
    """Register one Struct; a kind another Struct already declares is a ModuleLoadError naming both."""
    try:
        KINDS.add(event_type)
    except KindCollision as error:
        raise ModuleLoadError(str(error)) from None


def _declared_in(value: object, module: ModuleType) -> bool:
    """A Struct the module defines with a tag of its own: a base class without one (msgspec tags it with its class
    name) is no kind."""
    return (
        inspect.isclass(value)
        and issubclass(value, Event)
        and value.__module__ == module.__name__
        and value.__struct_config__.tag != value.__name__
    )
