"""The one owner of a channel's ack, nack and requeue frames. Batches, retries and the decode path decide a
delivery's fate (`decide`); only `flush` sends frames, one flush at a time.

A delivery leaves the outstanding set once its frame has been sent, never before. A `multiple=True` ack for tag T
covers every unsettled tag up to T on the channel, so it is sent only for a run of consecutive tags decided ACK whose
every lower tag already had its frame: never across a delivery still being handled, or whose retry copy is still
being published, or whose frame failed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import aio_pika
import structlog

log = structlog.get_logger("workers")


class Fate(StrEnum):
    """The frame a delivery gets.

    ack: done with it (handled, a duplicate, skipped, or its retry or dead-letter copy is stored).
    requeue: back to its queue (`nack(requeue=True)`), delivered again; on a quorum queue this counts towards
    HC_DELIVERY_LIMIT."""

    ACK = "ack"
    REQUEUE = "requeue"


# Told when a frame could not be sent: (kind, message, error). The broker redelivers what it did not get a frame for.
FrameFailed = Callable[[str, aio_pika.abc.AbstractIncomingMessage, Exception], None]


@dataclass(slots=True)
class _Outstanding:
    message: aio_pika.abc.AbstractIncomingMessage
    kind: str
    fate: Fate | None = None  # None while its handling or its copy's publish is under way
    failed: bool = False  # its frame failed: never sent again, and no multiple ack crosses it


class ChannelAcks:
    def __init__(self, frame_failed: FrameFailed | None = None) -> None:
        self._outstanding: dict[int, _Outstanding] = {}
        self._floor = 1  # every tag below it had its frame (delivery tags start at 1 on each channel)
        self._sent: set[int] = set()  # tags at or above the floor that had their frame
        self._flushing = asyncio.Lock()
        self._frame_failed = frame_failed or _log_failed_frame

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def delivered(self, message: aio_pika.abc.AbstractIncomingMessage, kind: str) -> None:
        self._outstanding[_tag(message)] = _Outstanding(message, kind)

    def decide(self, message: aio_pika.abc.AbstractIncomingMessage, fate: Fate) -> None:
        """The frame `message` gets at the next `flush()`. The first decision stands: one frame per delivery."""
        entry = self._outstanding.get(_tag(message))
        if entry is None or entry.fate is not None:
            log.warning("a delivery's fate was decided twice; the first stands", tag=_tag(message), fate=str(fate))
            return
        entry.fate = fate

    async def flush(self) -> None:
        """Send the frames decided so far; one flush at a time, so frames are planned from what was really sent."""
        async with self._flushing:
            for frames in self._plan():
                if not await self._send(frames):
                    return  # what follows may rely on this frame having been sent: the next flush plans again

    def _plan(self) -> list[list[_Outstanding]]:
        """Frames in tag order: a run of consecutive ACKs from the floor up is one `multiple=True` frame, every other
        decided delivery a frame of its own."""
        plan: list[list[_Outstanding]] = []
        run: list[_Outstanding] = []
        front: int | None = self._floor  # the next tag a run may cover: every tag below it is sent or planned
        for tag in sorted(self._outstanding):
            entry = self._outstanding[tag]
            if entry.fate is None or entry.failed:
                front = None
                continue
            if entry.fate is Fate.ACK and tag == front:
                run.append(entry)
                front = tag + 1
                continue
            if run:
                plan.append(run)
                run = []
            plan.append([entry])
            front = tag + 1 if tag == front else None
        if run:
            plan.append(run)
        return plan

    async def _send(self, frame: list[_Outstanding]) -> bool:
        last = frame[-1]
        try:
            if last.fate is Fate.REQUEUE:
                await last.message.nack(requeue=True)
            else:
                await last.message.ack(multiple=len(frame) > 1)
        except Exception as error:  # the channel closed, mostly: the broker redelivers these, the inbox absorbs it
            for entry in frame:
                entry.failed = True
                self._frame_failed(entry.kind, entry.message, error)
            return False
        for entry in frame:
            tag = _tag(entry.message)
            del self._outstanding[tag]
            self._sent.add(tag)
        while self._floor in self._sent:
            self._sent.discard(self._floor)
            self._floor += 1
        return True


def _tag(message: aio_pika.abc.AbstractIncomingMessage) -> int:
    tag = message.delivery_tag
    assert tag is not None  # a message received from a queue always has one (only basic.get's empty answer lacks it)
    return tag


def _log_failed_frame(kind: str, message: aio_pika.abc.AbstractIncomingMessage, error: Exception) -> None:
    log.warning("frame not sent; the broker redelivers the message", kind=kind, tag=_tag(message),
                error=type(error).__name__)  # fmt: skip
