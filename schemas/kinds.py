"""The registry of kinds: every kind a process knows, built-in and installed, each with its Struct. Plain data, no
I/O: `infra.kinds` imports the installed packages' kinds into it."""

from __future__ import annotations

from schemas.events import KNOWN_EVENTS, Event, decoder_for, kind_name_problem
from schemas.fields import BodyDecoder


class KindCollision(ValueError):
    """A Struct declares a kind that a built-in Struct or another package's already declares: refused, never one
    shadowing the other."""


class KindRegistry:
    """Every kind this process knows, built-in and installed, each with its Struct: what the gateway validates
    against, the workers, the operator commands and the metrics list, and the log allow-list reads business ids from.
    A kind is unknown when no installed package declares it. `infra.kinds` adds the installed ones."""

    def __init__(self, built_in: tuple[type[Event], ...]) -> None:
        self._types: dict[str, type[Event]] = {}
        self._decoders: dict[str, BodyDecoder[Event]] = {}
        self._business_id_fields: frozenset[str] = frozenset()
        self._sensitive_fields: frozenset[str] = frozenset()
        for event_type in built_in:
            self.add(event_type)
        self._built_in = frozenset(self._types)

    def add(self, event_type: type[Event]) -> None:
        """Know `event_type`'s kind (its `tag`). A kind already declared by another Struct (a built-in one, another
        package's) is a KindCollision naming both; the same Struct imported again replaces itself."""
        kind = event_type.kind() if isinstance(event_type, type) and issubclass(event_type, Event) else None
        if not isinstance(kind, str):
            raise TypeError(f"{event_type!r} is not an Event subclass with a tag such as tag='CARD_STATUS_CHANGE'")
        if problem := kind_name_problem(kind):
            raise TypeError(f"{event_type!r}: its tag {problem}; name it such as tag='CARD_STATUS_CHANGE'")
        known = self._types.get(kind)
        if known is not None and _declared_as(known) != _declared_as(event_type):
            owner = "the built-in kind" if kind in self._built_in else "already declared by"
            raise KindCollision(
                f"kind {kind} of {_declared_as(event_type)} is {owner} {_declared_as(known)}: "
                "give one of them a tag of its own"
            )
        self._types[kind] = event_type
        self._decoders[kind] = decoder_for(event_type)
        self._business_id_fields = frozenset().union(*(known.business_ids for known in self._types.values()))
        self._sensitive_fields = frozenset().union(*(known.sensitive for known in self._types.values()))

    def __contains__(self, kind: object) -> bool:
        return kind in self._types

    def kinds(self) -> frozenset[str]:
        return frozenset(self._types)

    def event_type(self, kind: str) -> type[Event] | None:
        return self._types.get(kind)

    def decoder(self, kind: str) -> BodyDecoder[Event] | None:
        return self._decoders.get(kind)

    def business_ids(self, kind: str) -> tuple[str, ...]:
        """The business ids of kind `kind` (none for a kind no package declares)."""
        event_type = self._types.get(kind)
        return event_type.business_ids if event_type is not None else ()

    def business_id_fields(self) -> frozenset[str]:
        """Fields that are a business id in any kind known."""
        return self._business_id_fields

    def sensitive_fields(self) -> frozenset[str]:
        """Fields that a kind known declares secret or personal (its `sensitive`): redacted by name everywhere."""
        return self._sensitive_fields


def _declared_as(event_type: type[Event]) -> str:
    """Where a Struct is declared: its module (the package's) and its name."""
    return f"{event_type.__module__}.{event_type.__qualname__}"


# The one registry of kinds in this process: the built-in ones from the start, installed ones as they load.
KINDS = KindRegistry(KNOWN_EVENTS)
