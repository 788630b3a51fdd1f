"""Wraps every registered handler so that, inside the handler's own transaction, it appends (kind, event id) to
test_effects, and hands the worker an effect outside the database (`ctx.after_commit`): a call to another service,
played by a row the call inserts into test_external_calls on a connection of its own, outside any transaction of the
worker's. The accounting harness counts both: one test_effects row per committed handling, one call per handled
event (a second call is a double external effect, none for a handled event a lost one)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

from tests.support.database import CREATE_EXTERNAL_CALLS, CREATE_TABLE
from workers.context import HandlerContext
from workers.outbox import effect
from workers.registry import REGISTRY, Handler

_service: list[asyncpg.Pool] = []  # the "other service": a small pool of the worker process's own
_opening = asyncio.Lock()


async def _calls() -> asyncpg.Pool:
    async with _opening:
        if not _service:
            _service.append(await asyncpg.create_pool(os.environ["HC_DATABASE_URL"], min_size=1, max_size=2))
    return _service[0]


@effect
async def record_call(payload: Any, idempotency_key: str) -> None:
    """The call, made by the worker's relay once the handling committed: one row per call, with its key and the
    process that made it."""
    pool = await _calls()
    await pool.execute(
        "INSERT INTO test_external_calls (kind, token, idempotency_key, pid) VALUES ($1, $2, $3, $4)",
        payload["kind"], payload["token"], idempotency_key, os.getpid(),
    )  # fmt: skip


def tapped(kind: str, handler: Handler) -> Handler:
    async def handle(event, ctx: HandlerContext) -> None:
        await handler(event, ctx)
        await ctx.tx.execute(
            "INSERT INTO test_effects (kind, token, attempt) VALUES ($1, $2, $3)", kind, ctx.event_id, ctx.attempt
        )
        await ctx.after_commit(record_call, {"kind": kind, "token": ctx.event_id})

    return handle


REGISTRY.schema(CREATE_TABLE)
REGISTRY.schema(CREATE_EXTERNAL_CALLS)
for registration in list(REGISTRY.registrations.values()):
    REGISTRY.handles(registration.event_type, retry_delays=registration.retry_delays, replace=True)(
        tapped(registration.kind, registration.handler)
    )
