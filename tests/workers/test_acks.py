"""The ack bookkeeping of one channel, alone: every delivery gets exactly one frame, sent once its fate is known, and
no `multiple=True` ack ever covers a delivery whose fate is not known yet or is something else than an ack.

No broker here: `RecordingChannel` is the unit's surroundings, not a stand-in for RabbitMQ's behaviour in a test of
something else. It applies each frame as the broker does (a `multiple=True` ack settles every unsettled tag up to its
own; a frame for a tag that is not unsettled is a 406 that closes the channel) and checks every tag it settles
against the fate the test decided for it. A frame that settles a tag against its fate is recorded, not raised: raised
inside the awaited ack, it would be taken for a failed frame by the code under test. The `channel` fixture fails the
test on any recorded violation once the test is done."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aio_pika.exceptions import ChannelInvalidStateError

from workers.acks import ChannelAcks, Fate


class PreconditionFailed(Exception):
    """What RabbitMQ answers a frame for a tag it no longer holds (406): it closes the channel."""


class RecordingChannel:
    def __init__(self) -> None:
        self.unsettled: set[int] = set()
        self.decided: dict[int, Fate] = {}  # what the test wants for each tag
        self.settled: dict[int, list[str]] = {}  # tag -> the frames that settled it
        self.gate: asyncio.Event | None = None  # while set to an unset event, frames wait on it (a slow socket)
        self.held = asyncio.Event()  # set once a frame waits on the gate
        self.closed = False
        self.violations: list[str] = []  # frames that settled a tag against the fate the test decided for it

    def deliver(self, count: int) -> list[RecordedMessage]:
        first = len(self.settled) + len(self.unsettled) + 1
        messages = [RecordedMessage(self, tag) for tag in range(first, first + count)]
        self.unsettled.update(message.delivery_tag for message in messages)
        return messages

    async def frame(self, name: str, tag: int, *, multiple: bool) -> None:
        if self.closed:
            raise ChannelInvalidStateError("channel closed")
        covered = sorted(t for t in self.unsettled if t <= tag) if multiple else [tag]
        if tag not in self.unsettled:
            self.closed = True
            raise PreconditionFailed(f"406 PRECONDITION_FAILED - unknown delivery tag {tag}")
        wanted = Fate.ACK if name == "ack" else Fate.REQUEUE
        if wrong := [t for t in covered if self.decided.get(t) != wanted]:
            self.violations.append(f"{name}({tag}, multiple={multiple}) covered {wrong}, decided {self.decided}")
        for t in covered:  # as the broker does, whatever the test decided
            self.unsettled.discard(t)
            self.settled.setdefault(t, []).append(f"{name}({tag}{', multiple' if multiple else ''})")
        if self.gate is not None:
            self.held.set()
            await self.gate.wait()

    def each_settled_once(self, tags: range) -> None:
        assert not self.unsettled, f"never settled: {sorted(self.unsettled)}"
        assert {tag: len(frames) for tag, frames in self.settled.items()} == dict.fromkeys(tags, 1), self.settled


class RecordedMessage:
    def __init__(self, channel: RecordingChannel, tag: int) -> None:
        self.recording = channel
        self.delivery_tag = tag

    async def ack(self, multiple: bool = False) -> None:
        await self.recording.frame("ack", self.delivery_tag, multiple=multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        assert requeue, "a requeue is the only nack the workers send"
        await self.recording.frame("nack", self.delivery_tag, multiple=multiple)


@pytest.fixture
def channel() -> Iterator[RecordingChannel]:
    recording = RecordingChannel()
    yield recording
    assert not recording.violations, "\n".join(recording.violations)


def decide(channel: RecordingChannel, acks: ChannelAcks, message: RecordedMessage, fate: Fate) -> None:
    channel.decided[message.delivery_tag] = fate
    acks.decide(message, fate)  # type: ignore[arg-type]


def received(acks: ChannelAcks, messages: list[RecordedMessage]) -> None:
    for message in messages:
        acks.delivered(message, "TEST")  # type: ignore[arg-type]


async def test_settled_out_of_order_each_delivery_gets_one_frame(channel):
    acks = ChannelAcks()
    messages = channel.deliver(8)
    received(acks, messages)
    for n in (4, 2, 6, 1, 3, 8, 5, 7):
        decide(channel, acks, messages[n - 1], Fate.ACK)
        await acks.flush()
    channel.each_settled_once(range(1, 9))
    assert acks.outstanding == 0


async def test_a_settle_while_another_flush_waits_on_a_slow_ack(channel):
    """Decisions made, and flushes started, while a flush holds the lock waiting on its frame: they are planned once
    it is done, from what it really sent."""
    acks = ChannelAcks()
    messages = channel.deliver(6)
    received(acks, messages)
    decide(channel, acks, messages[0], Fate.ACK)
    decide(channel, acks, messages[1], Fate.ACK)
    channel.gate = asyncio.Event()
    first = asyncio.create_task(acks.flush())  # sends ack(2, multiple) and waits on the socket
    await channel.held.wait()
    for n in (3, 5, 6):
        decide(channel, acks, messages[n - 1], Fate.ACK)
    second = asyncio.create_task(acks.flush())
    decide(channel, acks, messages[3], Fate.REQUEUE)
    third = asyncio.create_task(acks.flush())
    assert not first.done() and channel.settled == {1: ["ack(2, multiple)"], 2: ["ack(2, multiple)"]}
    channel.gate.set()
    await asyncio.gather(first, second, third)
    channel.each_settled_once(range(1, 7))
    assert channel.settled[4] == ["nack(4)"]
    assert acks.outstanding == 0


async def test_a_copy_in_flight_is_never_covered_and_a_refused_copy_is_requeued(channel):
    """Delivery 2 failed: its retry copy is being published while 3, 4 and 5 settle; then the broker refuses the
    copy, and 2 goes back to its queue. Nothing may have acked it meanwhile."""
    acks = ChannelAcks()
    messages = channel.deliver(5)
    received(acks, messages)
    decide(channel, acks, messages[0], Fate.ACK)
    await acks.flush()
    for n in (3, 4, 5):
        decide(channel, acks, messages[n - 1], Fate.ACK)
        await acks.flush()
    assert channel.unsettled == {2}
    decide(channel, acks, messages[1], Fate.REQUEUE)
    await acks.flush()
    channel.each_settled_once(range(1, 6))
    assert channel.settled[2] == ["nack(2)"]


async def test_a_copy_stored_after_later_tags_settled_concurrently_gets_its_own_ack(channel):
    """Forty deliveries settled by forty tasks in an interleaved order; three of them wait for their copy's confirm
    until every other delivery has had its frame, so each of the three comes after tags above it were settled."""
    acks = ChannelAcks()
    messages = channel.deliver(40)
    received(acks, messages)
    in_flight = {7, 19, 33}
    others_settled = asyncio.Event()
    settled_above: dict[int, int] = {}

    async def settle(message: RecordedMessage) -> None:
        tag = message.delivery_tag
        for _ in range(tag % 5):  # interleaved: each task gives way a few turns of the loop before it decides
            await asyncio.sleep(0)
        if tag in in_flight:
            await others_settled.wait()  # the copy's confirm comes last
            settled_above[tag] = sum(1 for t in channel.settled if t > tag)
        decide(channel, acks, message, Fate.ACK)
        await acks.flush()
        if len(channel.settled) == 40 - len(in_flight):
            others_settled.set()

    await asyncio.gather(*(settle(message) for message in reversed(messages)))
    # Each copy was stored after every tag above it had its frame, but the other copies in flight.
    assert all(settled_above[tag] >= 40 - tag - sum(t > tag for t in in_flight) for tag in in_flight), settled_above
    channel.each_settled_once(range(1, 41))
    assert acks.outstanding == 0


async def test_a_second_decision_for_a_delivery_sends_no_second_frame(channel):
    acks = ChannelAcks()
    (message,) = channel.deliver(1)
    received(acks, [message])
    decide(channel, acks, message, Fate.ACK)
    acks.decide(message, Fate.REQUEUE)  # type: ignore[arg-type]
    await acks.flush()
    await acks.flush()
    channel.each_settled_once(range(1, 2))


async def test_a_frame_on_a_closed_channel_is_reported_and_never_covered_later(channel):
    failed: list[tuple[str, int, str]] = []
    acks = ChannelAcks(frame_failed=lambda kind, message, error: failed.append(
        (kind, message.delivery_tag, type(error).__name__)))  # fmt: skip
    messages = channel.deliver(3)
    received(acks, messages)
    channel.closed = True
    decide(channel, acks, messages[0], Fate.ACK)
    await acks.flush()  # does not raise: the broker redelivers what the closed channel held
    assert failed == [("TEST", 1, "ChannelInvalidStateError")]
    channel.closed = False  # had the channel survived, the failed tag must still hold later multiple acks back
    decide(channel, acks, messages[1], Fate.ACK)
    decide(channel, acks, messages[2], Fate.ACK)
    await acks.flush()
    assert channel.settled == {2: ["ack(2)"], 3: ["ack(3)"]}


async def test_a_run_of_acks_at_the_front_is_one_multiple_frame_and_a_gap_stops_it(channel):
    """Tags 1-3 and 5 acked, 4 still being handled: one ack(3, multiple) for the front run, 5 alone; 4 later alone."""
    acks = ChannelAcks()
    messages = channel.deliver(5)
    received(acks, messages)
    for n in (1, 2, 3, 5):
        decide(channel, acks, messages[n - 1], Fate.ACK)
    await acks.flush()
    assert channel.settled == {1: ["ack(3, multiple)"], 2: ["ack(3, multiple)"], 3: ["ack(3, multiple)"], 5: ["ack(5)"]}
    decide(channel, acks, messages[3], Fate.ACK)
    await acks.flush()
    assert channel.settled[4] == ["ack(4)"]
    channel.each_settled_once(range(1, 6))


async def test_a_requeue_is_a_frame_of_its_own_and_the_acks_after_it_still_run_together(channel):
    acks = ChannelAcks()
    messages = channel.deliver(4)
    received(acks, messages)
    decide(channel, acks, messages[0], Fate.REQUEUE)
    for n in (2, 3):
        decide(channel, acks, messages[n - 1], Fate.ACK)
    await acks.flush()
    assert channel.settled == {1: ["nack(1)"], 2: ["ack(3, multiple)"], 3: ["ack(3, multiple)"]}
    assert acks.outstanding == 1


async def test_acks_behind_an_undecided_front_are_sent_one_by_one(channel):
    """Tag 1 still being handled: nothing above it may be covered by a multiple ack, so each gets its own frame."""
    acks = ChannelAcks()
    messages = channel.deliver(3)
    received(acks, messages)
    for n in (2, 3):
        decide(channel, acks, messages[n - 1], Fate.ACK)
    await acks.flush()
    assert channel.settled == {2: ["ack(2)"], 3: ["ack(3)"]}
    decide(channel, acks, messages[0], Fate.ACK)
    await acks.flush()
    channel.each_settled_once(range(1, 4))
    assert channel.settled[1] == ["ack(1)"]


async def test_an_undecided_front_tag_keeps_every_later_ack_single_whatever_its_length(channel):
    """Tag 1 still being handled and 2-5 acked in one flush: a run may only start at the floor, so no ack after 1 is
    multiple (a multiple ack(5) would settle 1 before its fate is known)."""
    acks = ChannelAcks()
    messages = channel.deliver(5)
    received(acks, messages)
    for n in (2, 3, 4, 5):
        decide(channel, acks, messages[n - 1], Fate.ACK)
    await acks.flush()
    assert channel.settled == {n: [f"ack({n})"] for n in (2, 3, 4, 5)}
    decide(channel, acks, messages[0], Fate.ACK)
    await acks.flush()
    channel.each_settled_once(range(1, 6))
    assert acks.outstanding == 0
