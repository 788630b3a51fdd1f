"""An OTP notifier that fails, quoting the code and the card holder's contacts in its error, as a careless SMS
client does. It writes each code it was given to the file named by HC_TEST_NOTIFIER_FILE: the notifier must still
receive the code untouched. Loaded by a worker process through --handlers."""

from __future__ import annotations

import asyncio
import os

from schemas.events import OptCode
from workers.handlers.auth import set_otp_notifier


class FailingNotifier:
    async def deliver(self, event: OptCode, idempotency_key: str) -> None:
        await asyncio.to_thread(_record, event.code)
        raise RuntimeError(
            f"SMS gateway refused: code:{event.code} for +86-183-0152-3750 (card holder a.b@example.com). "
            f"Your code is {event.code}."
        )


def _record(code: str) -> None:
    with open(os.environ["HC_TEST_NOTIFIER_FILE"], "a") as received:
        received.write(code + "\n")


set_otp_notifier(FailingNotifier())
