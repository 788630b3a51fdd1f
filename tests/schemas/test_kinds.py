"""The registry of kinds: which names a kind may have. A kind's queue is `hypercard.<name in lower case>`, so a kind
named after one of the topology's own names (INVALID, UNVERIFIED, UNROUTED, EVENTS) would be routed into a holding
queue, and its worker would consume what that queue holds: events the signature never vouched for."""

from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from infra.settings import SettingsError, load_settings
from schemas.events import Event
from schemas.kinds import KindRegistry
from workers.registry import Registry

# Issue 26: the names the gateway and the topology use for their own queues and exchanges.
RESERVED = ["INVALID", "UNVERIFIED", "UNROUTED", "EVENTS"]


def kind_named(name: str) -> type[Event]:
    class Reserved(Event, tag=name):
        card_id: str

    return Reserved


async def handler(event: Event, ctx: object) -> None:
    """Never called: its registration is refused."""


@pytest.mark.parametrize("name", RESERVED)
def test_a_user_kind_named_like_the_topologys_own_queues_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match=f"{name}.*reserved"):
        KindRegistry(()).add(kind_named(name))
    with pytest.raises(TypeError, match=f"{name}.*reserved"):
        Registry().handles(kind_named(name))(handler)


@pytest.mark.parametrize("name", RESERVED)
def test_an_extra_path_bound_to_a_reserved_name_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="HC_EXTRA_PATHS"):
        load_settings(GatewaySettings, {"HC_EXTRA_PATHS": f"/hc_sync/legacy={name}"})


def test_a_name_that_only_contains_a_reserved_one_is_a_kind() -> None:
    registry = KindRegistry(())
    for name in ("INVALID_CARD", "CARD_UNVERIFIED", "EVENTS2"):
        registry.add(kind_named(name))
    assert registry.kinds() == {"INVALID_CARD", "CARD_UNVERIFIED", "EVENTS2"}
