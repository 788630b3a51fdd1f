"""Handler registration: `@handles(EventType)` in any module, loaded by name or through an entry point.

from schemas.events import Event
from workers import HandlerContext, handles

class CardStatusChange(Event, tag="CARD_STATUS_CHANGE"):
    card_id: str
    new_status: str

@handles(CardStatusChange)
async def on_status_change(event: CardStatusChange, ctx: HandlerContext) -> None:
    await ctx.tx.execute("...", event.card_id, event.new_status)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from importlib.resources.abc import Traversable
from typing import Any

import structlog

from infra.kinds import declare_kind, import_user_module, load_entry_point, load_kinds, module_names
from schemas.events import Event, decoder_for, kind_name_problem
from schemas.fields import BodyDecoder
from schemas.kinds import KINDS
from workers.context import HandlerContext

ENTRY_POINT_GROUP = "hypercard.handlers"
DEFAULT_HANDLERS = "workers.handlers"
Handler = Callable[[Any, HandlerContext], Awaitable[None]]
log = structlog.get_logger("workers")


@dataclass(frozen=True)
class Registration:
    kind: str
    event_type: type[Event]
    handler: Handler
    decoder: BodyDecoder[Event]
    retry_delays: tuple[float, ...] | None  # None: the HC_RETRY_DELAYS schedule


class Registry:
    def __init__(self) -> None:
        self.registrations: dict[str, Registration] = {}
        self.schema_statements: list[str] = []
        self.module_migrations: dict[str, Traversable] = {}

    def schema(self, sql: str) -> None:
        """SQL a user module needs (CREATE TABLE IF NOT EXISTS ...): run at every worker start, under the migration
        lock, after the migrations."""
        self.schema_statements.append(sql)

    def migrations(self, module: str, folder: Traversable) -> None:
        """A user module's versioned migrations: the `NNN_name.sql` files of `folder`, each applied once, in version
        order, under the migration lock, and recorded in hypercard_module_migrations under `module`."""
        if self.module_migrations.get(module, folder) != folder:
            raise ValueError(f"migrations for {module!r} are already registered from {self.module_migrations[module]}")
        self.module_migrations[module] = folder

    def handles(
        self, event_type: type[Event], *, retry_delays: Iterable[float] | None = None, replace: bool = False
    ) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine as the handler of `event_type`'s kind (its `tag`).

        `retry_delays` overrides the retry schedule for this kind; `replace=True` replaces an existing handler
        (for instance one of the defaults)."""
        kind = event_type.kind() if isinstance(event_type, type) and issubclass(event_type, Event) else None
        if not isinstance(kind, str):
            raise TypeError(f"{event_type!r} is not an Event subclass with a tag such as tag='CARD_STATUS_CHANGE'")
        if problem := kind_name_problem(kind):
            raise TypeError(f"{event_type!r}: its tag {problem}; name it such as tag='CARD_STATUS_CHANGE'")

        def register(handler: Handler) -> Handler:
            if not inspect.iscoroutinefunction(handler):  # a plain def would fail every attempt, at `await`
                name = getattr(handler, "__qualname__", repr(handler))
                raise TypeError(f"the handler of {kind}, {name}, is not a coroutine function: declare it `async def`")
            if kind in self.registrations and not replace:
                existing = self.registrations[kind].handler
                raise ValueError(
                    f"{kind} already has a handler ({existing.__module__}.{existing.__qualname__}); "
                    "pass replace=True to replace it"
                )
            delays = tuple(retry_delays) if retry_delays is not None else None
            self.registrations[kind] = Registration(kind, event_type, handler, decoder_for(event_type), delays)
            return handler

        return register

    @property
    def kinds(self) -> list[str]:
        return sorted(self.registrations)


REGISTRY = Registry()
handles = REGISTRY.handles
schema = REGISTRY.schema
migrations = REGISTRY.migrations


def load_handler_modules(modules: Iterable[str], use_entry_points: bool = True) -> None:
    """Import the default handlers, then the user's modules (HC_HANDLERS / --handlers, each a module or a
    comma-separated list) and entry points (`hypercard.kinds`, `hypercard.handlers`); every kind with a handler is
    then in the registry of kinds (`schemas.kinds.KINDS`), as the gateway and the operator commands know it. A user's
    module that cannot be imported is a ModuleLoadError (an ImportError) that names it."""
    importlib.import_module(DEFAULT_HANDLERS)
    for name in module_names(modules):
        import_user_module(name, "handler module")
        log.info("handler module loaded", module=name)
    if use_entry_points:
        load_kinds()
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            load_entry_point(entry_point)
            log.info("handler module loaded", entry_point=entry_point.name)
    declare_handled_kinds(REGISTRY)


def declare_handled_kinds(registry: Registry) -> None:
    """Every kind `registry` has a handler for, known by its handler's Struct (its business ids logged in clear); a
    handler's Struct for a kind another Struct declares is a ModuleLoadError naming both."""
    for registration in registry.registrations.values():
        if KINDS.event_type(registration.kind) is not registration.event_type:
            declare_kind(registration.event_type)
