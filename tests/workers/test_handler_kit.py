"""`workers.testing`, the kit handler authors test with: each run is a delivery as the worker makes it (decoded, its
inbox key claimed, its handler in a savepoint), on the real PostgreSQL, and nothing is left behind."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from schemas.events import Event
from schemas.samples import sample_body
from tests.support.database import DATABASE_URL
from workers import GiveUp, HandlerContext, Retry
from workers.outcomes import Outcome
from workers.registry import Registry
from workers.testing import handler_kit

pytestmark = pytest.mark.database


class KitProbe(Event, tag="KIT_PROBE"):
    name: str
    behaviour: str = "write"  # write, fail, give_up, slow, cancelled


PROBES = Registry()
PROBES.schema("CREATE TABLE IF NOT EXISTS kit_probes (name text PRIMARY KEY, attempt int NOT NULL)")


@PROBES.handles(KitProbe, retry_delays=(1, 10))
async def probe(event: KitProbe, ctx: HandlerContext) -> None:
    await ctx.tx.execute("INSERT INTO kit_probes VALUES ($1, $2)", event.name, ctx.attempt)
    ctx.log.info("probe ran", name=event.name, attempt=ctx.attempt)
    if event.behaviour == "fail":
        raise Retry("the first try fails") if ctx.attempt == 1 else RuntimeError("and so does the second")
    if event.behaviour == "give_up":
        raise GiveUp("never")
    if event.behaviour == "slow":
        await asyncio.sleep(5)
    if event.behaviour == "cancelled":
        raise asyncio.CancelledError("a library's future cancelled under the handler")


def kit(**options):
    return handler_kit("KIT_PROBE", DATABASE_URL, registry=PROBES, **options)


async def test_a_failure_is_retried_on_the_schedule_then_dead_lettered_and_its_writes_are_undone():
    async with kit() as k:
        first = await k.run(KitProbe(name="a", behaviour="fail"))
        assert first.outcome == Outcome.RETRIED and isinstance(first.error, Retry) and first.attempt == 1
        second = await k.retry(first)
        assert second.outcome == Outcome.RETRIED and second.attempt == 2 and second.event_id == first.event_id
        third = await k.retry(second)  # the kind's schedule has two steps: the third failure is the last
        assert third.outcome == Outcome.DEAD_LETTERED and third.attempt == 3
        assert await k.tx.fetchval("SELECT count(*) FROM kit_probes WHERE name = 'a'") == 0  # each savepoint undone
        assert [line["attempt"] for line in first.logs + second.logs + third.logs] == [1, 2, 3]


async def test_a_retry_after_a_failure_is_not_a_duplicate_and_a_repeat_after_success_is():
    async with kit() as k:
        failed = await k.run(KitProbe(name="b", behaviour="give_up"))
        assert failed.outcome == Outcome.DEAD_LETTERED and isinstance(failed.error, GiveUp)
        handled = await k.run(KitProbe(name="c"))
        repeat = await k.duplicate(handled)
        assert (handled.outcome, repeat.outcome) == (Outcome.HANDLED, Outcome.DUPLICATE)
        assert await k.tx.fetchval("SELECT attempt FROM kit_probes WHERE name = 'c'") == 1


async def test_a_slow_handler_times_out_and_a_body_that_does_not_decode_is_quarantined():
    async with kit(handler_timeout=0.2) as k:
        slow = await k.run(KitProbe(name="d", behaviour="slow"))
        assert slow.outcome == Outcome.RETRIED and isinstance(slow.error, TimeoutError)
        assert slow.error_type == "HandlerTimeout"  # what the worker's retry copy says
        broken = await k.run(b'{"notify_type": "KIT_PROBE", "name": 7}')
        assert broken.outcome == Outcome.QUARANTINED and broken.event is None and "name" in str(broken.error)


async def test_a_handler_that_raises_cancelled_error_is_retried_as_the_worker_retries_it():
    """A CancelledError the handler raised of its own fails its delivery as any error does in a worker
    (tests/workers/test_kit_parity.py): retried with its type name, its writes and its claim undone. The test that
    called the kit goes on."""
    async with kit() as k:
        cancelled = await k.run(KitProbe(name="f", behaviour="cancelled"))
        assert (cancelled.outcome, cancelled.error_type) == (Outcome.RETRIED, "CancelledError")
        assert isinstance(cancelled.error, asyncio.CancelledError)
        assert await k.tx.fetchval("SELECT count(*) FROM kit_probes WHERE name = 'f'") == 0
        assert await k.tx.fetchval("SELECT count(*) FROM hypercard_inbox WHERE kind = 'KIT_PROBE'") == 0


async def test_a_kind_without_an_idempotency_key_is_handled_again_on_a_duplicate():
    """CONSUME: every delivery counts (no inbox key), so a platform retry is run again, as the worker runs it."""
    async with handler_kit("CONSUME", DATABASE_URL) as k:
        run = await k.run(sample_body("consume"))
        assert run.outcome == Outcome.HANDLED and (await k.duplicate(run)).outcome == Outcome.HANDLED


async def test_the_logs_name_the_event_and_everything_is_rolled_back_when_the_kit_closes():
    async with kit() as k:
        run = await k.run('{"notify_type": "KIT_PROBE", "name": "e"}')
        assert run.outcome == Outcome.HANDLED
        assert run.logs == [
            {"event": "probe ran", "name": "e", "attempt": 1, "event_id": run.event_id, "notify_type": "KIT_PROBE",
             "log_level": "info"}
        ]  # fmt: skip
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        assert await connection.fetchval("SELECT count(*) FROM kit_probes WHERE name = 'e'") == 0
        assert await connection.fetchval("SELECT count(*) FROM hypercard_inbox WHERE kind = 'KIT_PROBE'") == 0
    finally:
        await connection.close()


async def test_a_default_handler_runs_on_its_sample_body():
    async with handler_kit("RECHARGE", DATABASE_URL) as k:
        run = await k.run(sample_body("recharge"))
        assert run.outcome == Outcome.HANDLED and (await k.duplicate(run)).outcome == Outcome.DUPLICATE


async def test_an_unknown_kind_is_refused_naming_the_kinds_with_a_handler():
    with pytest.raises(LookupError, match="no handler for NOPE.*KIT_PROBE"):
        async with handler_kit("NOPE", DATABASE_URL, registry=PROBES):
            pass
