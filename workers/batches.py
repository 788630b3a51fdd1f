"""Deliveries handled in batches: those that arrive together share one PostgreSQL transaction, one inbox claim
statement and one commit. Each handler runs in a savepoint of its own, so a failure rolls back and retries only its
own message. Messages are acked, retried or dead-lettered only after the commit; their frames are sent by their
channel's `workers.acks.ChannelAcks`, which never lets one ack cover a delivery another batch is still handling.

A batch holds at most HC_BATCH_SIZE deliveries (at most 64: more subtransactions than that in one transaction
overflow PostgreSQL's per-backend cache and slow every session down), collected for at most HC_BATCH_WAIT seconds
after the first. A batch that fails as a whole is handled again one delivery per transaction, the path that also
pauses the worker during a database outage. So is a batch that waits on a lock for longer than BATCH_LOCK_TIMEOUT:
two batches that update the same rows in a different order would otherwise deadlock, and PostgreSQL takes a second
to notice. One delivery per transaction holds one row at a time and never deadlocks that way.

No delivery ends a loop: whatever escapes a batch leaves its unsettled deliveries for redelivery, logged and counted
(hypercard_worker_contained_failures_total), and a loop that ends anyway is started again
(hypercard_worker_loop_restarts_total)."""

from __future__ import annotations

import asyncio
import functools
from collections import deque

import structlog
from aio_pika.exceptions import ChannelInvalidStateError

from infra.waiting import wait_for_event
from workers import database, handling
from workers.delivery import (
    DUPLICATE,
    HANDLED,
    RELEASE_SAVEPOINT,
    SAVEPOINT,
    SAVEPOINT_GONE,
    Delivery,
    DeliveryRunner,
    HandlerAbandoned,
    Result,
    stopping,
)
from workers.handling import CONTENTION
from workers.outcomes import Outcome
from workers.transaction_guard import HandlerEndedTransaction

log = structlog.get_logger("workers")
BATCH_LOCK_TIMEOUT = "100ms"
LOOP_RESTART_DELAY = 0.5  # a loop that keeps failing at once does not spin
# One savepoint name, reused: releasing the previous savepoint and opening the next take one round trip.
FIRST_SAVEPOINT = f"SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'; {SAVEPOINT}"
NEXT_SAVEPOINT = f"{RELEASE_SAVEPOINT}; {SAVEPOINT}"


class Batches:
    """Collects deliveries and runs `concurrency` batches at a time, each in a transaction of its own."""

    def __init__(self, runner: DeliveryRunner, size: int, wait: float, concurrency: int) -> None:
        self.runner = runner
        self.size = size
        self.wait = wait
        self.concurrency = concurrency
        self._pending: deque[Delivery] = deque()
        self._taken = 0  # deliveries in a batch and not settled yet
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._collecting = asyncio.Lock()  # one batch collects at a time, so arrivals are not spread over batches
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self._loops = [self._start_loop(n) for n in range(self.concurrency)]

    def _start_loop(self, n: int, delay: float = 0.0) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(delay), name=f"batches-{n}")
        task.add_done_callback(functools.partial(self._loop_ended, n))
        return task

    def _loop_ended(self, n: int, task: asyncio.Task[None]) -> None:
        """A loop only ends when closed; one that ended otherwise is started again, and counted."""
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        log.error("batch loop ended; starting it again", loop=n,
                  error=f"{type(error).__name__}: {error}" if error else "returned")  # fmt: skip
        self.runner.metrics.loop_restarts.inc()
        self._loops[n] = self._start_loop(n, LOOP_RESTART_DELAY)

    def submit(self, delivery: Delivery) -> None:
        self._pending.append(delivery)
        self._idle.clear()
        self._arrived.set()
        if len(self._pending) >= self.size:
            self._full.set()

    @property
    def outstanding(self) -> int:
        """Deliveries received and not settled yet."""
        return len(self._pending) + self._taken

    async def drained(self, timeout: float) -> bool:
        """Wait until every delivery received has been settled; False if `timeout` ran out first."""
        return await wait_for_event(self._idle, timeout)

    async def close(self) -> None:
        """Stop; a batch still running is rolled back and its messages, unacked, are redelivered."""
        self._closing = True
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []

    async def _run(self, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        while True:
            async with self._collecting:
                batch = await self._collect()
            outcomes: dict[Delivery, Outcome] = {}
            concluded = False
            try:
                try:
                    await self._handle(batch, outcomes)
                except BaseException as error:
                    if self._closing or stopping(error):
                        raise  # no frame sent for any of them: cut off below
                    # A bug, a broker or database failure outside a handler, a CancelledError of a library's (a
                    # confirm future cancelled under it): one batch's failure; re-raised, it would end the loop.
                    self._contain(batch, outcomes, error)
                await self.runner.conclude(outcomes)
                concluded = True
            finally:
                if not concluded:  # whatever ended the loop, every delivery it took has a fate
                    self.runner.cut_off(d for d in batch if d.outcome is None and d not in self._pending)
                self._taken -= len(batch)
                if not self.outstanding:
                    self._idle.set()

    def _contain(self, batch: list[Delivery], outcomes: dict[Delivery, Outcome], error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        for delivery in batch:
            if delivery not in outcomes and delivery.outcome is None and delivery not in self._pending:
                outcomes[delivery] = self.runner.contained(delivery, "batch", reason)

    async def _collect(self) -> list[Delivery]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        if len(self._pending) < self.size and self.wait > 0:
            self._full.clear()
            await wait_for_event(self._full, self.wait)
        batch = [self._pending.popleft() for _ in range(min(self.size, len(self._pending)))]
        self._taken += len(batch)
        self._full.clear()
        return batch

    async def _handle(self, batch: list[Delivery], outcomes: dict[Delivery, Outcome]) -> None:
        """Handle `batch`, putting what became of each delivery in `outcomes` (its frame is not sent yet)."""
        deliveries: list[Delivery] = []
        keys: set[tuple[str, str]] = set()  # (kind, inbox key) of the deliveries kept in this batch
        for delivery in batch:
            if not _channel_open(delivery):  # its tag cannot be acked any more: the broker redelivers it
                outcomes[delivery] = Outcome.LEFT_FOR_REDELIVERY
                continue
            self.runner.trace(delivery)
            rejected = await self.runner.decode(delivery)
            if rejected is not None:
                outcomes[delivery] = rejected
                continue
            if delivery.inbox_key is not None and (delivery.kind, delivery.inbox_key) in keys:
                self.submit(delivery)  # the same key twice in one batch: the next batch tells if it is a duplicate
                continue
            if delivery.inbox_key is not None:
                keys.add((delivery.kind, delivery.inbox_key))
            deliveries.append(delivery)
        if len(deliveries) == 1:
            outcomes[deliveries[0]] = await self.runner.process_alone(deliveries[0])
            return
        if not deliveries:
            return
        self.runner.metrics.batch_size.observe(len(deliveries))
        results: dict[Delivery, Result] = {}
        try:
            await self._transaction(deliveries, results)
        except asyncio.CancelledError:
            raise
        except (HandlerEndedTransaction, HandlerAbandoned) as ended:  # only a transaction that really ended gets here
            await self._undo(deliveries, results, ended, outcomes)
            return
        except Exception as error:
            structlog.contextvars.clear_contextvars()
            contention = isinstance(error, CONTENTION)
            self.runner.metrics.batch_rollbacks.labels("lock" if contention else "failure").inc()
            report = log.info if contention else log.warning
            report("batch rolled back; handling its deliveries one per transaction", error=type(error).__name__,
                   size=len(deliveries))  # fmt: skip
            for delivery in deliveries:
                outcomes[delivery] = await self.runner.process_alone(delivery)
            return
        for delivery in deliveries:
            result = results[delivery]
            if result is not HANDLED and result is not DUPLICATE:
                self.runner.bind(delivery)  # settling it logs: a skip's reason, a failure
            outcomes[delivery] = await self.runner.settle(delivery, result)

    async def _transaction(self, deliveries: list[Delivery], results: dict[Delivery, Result]) -> None:
        """Claim every key, run each handler in its savepoint, commit; what each came to, in `results`. Raises if
        the transaction as a whole failed: then nothing of it was committed, unless a handler ended it
        (HandlerEndedTransaction, `lost`), when `results` holds what had run before."""
        # The batch's span holds its claim and commit; each delivery's span its savepoint and handler.
        with self.runner.transaction_span(deliveries):
            async with self.runner.transaction() as connection:
                await self._each_in_its_savepoint(connection, deliveries, results)

    async def _undo(
        self,
        deliveries: list[Delivery],
        results: dict[Delivery, Result],
        ended: HandlerEndedTransaction | HandlerAbandoned,
        outcomes: dict[Delivery, Outcome],
    ) -> None:
        """A handler ended the batch's transaction (committed or rolled back what was done so far, or was abandoned
        with its connection): the claims of the deliveries not handled yet are undone, the offender fails, the others
        are handled again one per transaction (a handler that had run and whose work was committed then finds its
        claim: a duplicate)."""
        structlog.contextvars.clear_contextvars()
        self.runner.metrics.batch_rollbacks.labels("failure").inc()
        log.warning("a handler ended its batch's transaction; handling the batch one delivery per transaction",
                    size=len(deliveries), error=type(ended).__name__)  # fmt: skip
        not_run = [delivery for delivery in deliveries if delivery not in results]
        offender = not_run[0]
        await self.runner.release_claims(not_run)
        for delivery in deliveries:
            result = results.get(delivery)
            if delivery is offender:
                self.runner.bind(delivery)
                outcomes[delivery] = await self.runner.settle(delivery, ended)
            elif result is None or result is HANDLED:
                outcomes[delivery] = await self.runner.process_alone(delivery)
            else:
                self.runner.bind(delivery)
                outcomes[delivery] = await self.runner.settle(delivery, result)

    async def _each_in_its_savepoint(
        self, connection: database.Transaction, deliveries: list[Delivery], results: dict[Delivery, Result]
    ) -> None:
        claimed = await database.claim_many(
            connection,
            [(d.kind, d.inbox_key, d.event_id, d.previous_inbox_key) for d in deliveries if d.inbox_key],
        )
        for delivery in deliveries:  # first: the deliveries without a result then all hold a claim of this batch
            if delivery.inbox_key is not None and (delivery.kind, delivery.inbox_key) not in claimed:
                results[delivery] = DUPLICATE
        previous: Delivery | None = None  # the delivery whose savepoint the next statement releases
        for delivery in deliveries:
            if delivery in results:
                continue
            self.runner.bind(delivery)
            with self.runner.traced(delivery):
                await _savepoint(connection, NEXT_SAVEPOINT if previous else FIRST_SAVEPOINT, previous, results)
                results[delivery] = await handling.handle(self.runner, connection, delivery)
                previous = delivery
        if previous is not None:  # the last handler's savepoint too: still there, or its handler ended the transaction
            await _savepoint(connection, RELEASE_SAVEPOINT, previous, results)


async def _savepoint(
    connection: database.Transaction, statement: str, previous: Delivery | None, results: dict[Delivery, Result]
) -> None:
    """Run `statement`, which releases the savepoint of `previous` if there is one: gone, that delivery's handler
    ended the transaction behind its guard (COMMIT AND CHAIN, ...), and is the offender (`results` forgets it)."""
    try:
        await connection.execute(statement)
    except SAVEPOINT_GONE as error:
        if previous is None:
            raise
        del results[previous]
        raise HandlerEndedTransaction(
            "the handler ended the worker's transaction behind its guard", lost=True
        ) from error


def _channel_open(delivery: Delivery) -> bool:
    try:
        delivery.message.channel  # noqa: B018 - raises once the channel is closed
    except ChannelInvalidStateError:
        return False
    return True
