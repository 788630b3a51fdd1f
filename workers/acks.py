"""Acks for one channel's deliveries, sent after a batch commits: one `multiple=True` frame for the run of settled
deliveries at the front, one frame each for the others.

A `multiple=True` ack covers every unacked delivery tag up to its own, on that channel: sent for a tag with an
earlier delivery still being handled (in another batch, or waiting for a retry's publish), it would ack that one too,
and a crash would then lose it. So it only ever covers the front of the channel's outstanding deliveries, in
delivery order, when every one of them is settled."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import aio_pika


class ChannelAcks:
    def __init__(self) -> None:
        # Delivery tag -> its message, in delivery order; None once it may be acked.
        self._outstanding: OrderedDict[int, aio_pika.abc.AbstractIncomingMessage | None] = OrderedDict()
        self._settled: list[aio_pika.abc.AbstractIncomingMessage] = []

    def delivered(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self._outstanding[message.delivery_tag] = message  # type: ignore[index]

    def ack_later(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """Acked at the next `flush()`."""
        if message.delivery_tag in self._outstanding:
            self._settled.append(message)

    def settled_elsewhere(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        """Acked or rejected on its own (a retry, a dead letter, a requeue): no longer holds the front back."""
        self._outstanding.pop(message.delivery_tag, None)  # type: ignore[arg-type]

    async def flush(self) -> None:
        """Ack what `ack_later` collected; if the channel is gone the broker redelivers, and the inbox absorbs it."""
        settled, self._settled = self._settled, []
        for message in settled:
            self._outstanding[message.delivery_tag] = None  # type: ignore[index]
        front = None
        while self._outstanding:
            tag, waiting = next(iter(self._outstanding.items()))
            if waiting is not None:
                break
            self._outstanding.popitem(last=False)
            front = tag
        alone = [message for message in settled if message.delivery_tag in self._outstanding]
        with contextlib.suppress(Exception):
            if front is not None:
                last = next(message for message in settled if message.delivery_tag == front)
                await last.ack(multiple=True)
            for message in alone:
                self._outstanding.pop(message.delivery_tag, None)  # type: ignore[arg-type]
                await message.ack()
