"""One decoded delivery from its handler to its result, in a savepoint of a transaction it is given: the step every
delivery of a batch goes through (`workers.batches`), and every run of the test kit (`workers.testing`). Its claim is
held in that transaction; a failure undoes its own effects and its claim, and what it came to is kept for
`DeliveryRunner.settle`, which decides its outcome."""

from __future__ import annotations

import asyncpg

from workers import database
from workers.delivery import HANDLED, Delivery, DeliveryRunner, HandlerAbandoned, Result, end_savepoint, stopping
from workers.transaction_guard import HandlerEndedTransaction

# Another transaction holds what this batch needs: handled again one delivery per transaction.
CONTENTION = (
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


async def handle(runner: DeliveryRunner, connection: database.Transaction, delivery: Delivery) -> Result:
    try:
        await runner.run_handler(delivery, connection)
    except CONTENTION:
        raise  # not the event's fault: the whole batch again, one delivery per transaction
    except BaseException as error:  # its own effects undone, and its claim, so that its retry is not a duplicate
        if stopping(error) or isinstance(error, HandlerAbandoned):
            raise
        if isinstance(error, HandlerEndedTransaction) and error.lost:
            raise
        await end_savepoint(connection, failed=True)  # raises HandlerEndedTransaction if it ended it
        if delivery.inbox_key is not None:
            await database.release_claim(connection, delivery.kind, delivery.inbox_key, delivery.previous_inbox_key)
        return error
    return HANDLED
