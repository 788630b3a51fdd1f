"""Tracing end to end, with the gateway and a worker in this process exporting to memory: a push and its handling
share one trace, a retry links to the attempt that failed, a batch's transaction links to its deliveries, and the
headers that carry it all are input like any other."""

from __future__ import annotations

import json

import aio_pika
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from schemas import topology
from tests.support.broker import take
from tests.support.spans import finished, traceparent, tracing_in_memory
from tests.support.waiting import eventually
from workers.replay import ReplayFilter, replay

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"
KIND = "TEST_TRACKED"
QUEUE = topology.kind_queue(KIND)


@pytest.fixture
def traced():
    with tracing_in_memory() as (tracing, exporter):
        yield tracing, exporter


async def push(gateway, sign, **fields) -> None:
    body = json.dumps({"notify_type": KIND, **fields}).encode()
    response = await gateway.post(PATH, data=body, headers=sign(body))
    assert response.status == 200


def attempt_spans(exporter, token_count: int = 1):
    return lambda: _at_least(finished(exporter, SpanKind.CONSUMER), token_count)


async def _at_least(spans, count):
    return spans if len(spans) >= count else None


async def test_a_push_and_its_handling_share_one_trace(make_gateway, make_worker, db, sign, traced):
    tracing, exporter = traced
    gateway = await make_gateway(tracing=tracing)
    await make_worker(KIND, tracing=tracing)
    await push(gateway, sign, token="jane@example.com")  # a value that must not reach any span

    (handled,) = await eventually(attempt_spans(exporter))
    (pushed,) = finished(exporter, SpanKind.SERVER)
    assert pushed.name == "hypercard push"
    assert pushed.attributes["hypercard.notify_type"] == KIND
    assert pushed.attributes["hypercard.outcome"] == "accepted"  # a user kind with a handler: validated as its kind
    assert pushed.attributes["http.response.status_code"] == 200

    assert handled.name == f"process {QUEUE}"
    assert handled.context.trace_id == pushed.context.trace_id
    assert handled.parent.span_id == pushed.context.span_id
    assert handled.attributes["hypercard.event_id"] == pushed.attributes["hypercard.event_id"]
    assert handled.attributes["hypercard.attempt"] == 1 and handled.attributes["hypercard.outcome"] == "handled"
    assert handled.status.status_code is StatusCode.UNSET and not handled.links

    # Its database work: the transaction's span, the child of the delivery's.
    (transaction,) = [span for span in exporter.get_finished_spans() if span.name == "hypercard transaction"]
    assert transaction.parent.span_id == handled.context.span_id
    assert transaction.context.trace_id == pushed.context.trace_id
    assert await db.fetchval("SELECT count(*) FROM test_effects WHERE token = 'jane@example.com'") == 1

    everything = [str(value) for span in exporter.get_finished_spans() for value in span.attributes.values()]
    assert not [value for value in everything if "jane" in value]


async def test_a_retry_links_to_the_attempt_that_failed_in_the_same_trace(make_gateway, make_worker, db, sign, traced):
    tracing, exporter = traced
    gateway = await make_gateway(tracing=tracing)
    await make_worker(KIND, tracing=tracing)
    await push(gateway, sign, token="once", fail_until=2)  # the first attempt fails, the retry succeeds

    await eventually(attempt_spans(exporter, 2))
    (pushed,) = finished(exporter, SpanKind.SERVER)
    (first,) = finished(exporter, SpanKind.CONSUMER, {"hypercard.attempt": 1})
    (retry,) = finished(exporter, SpanKind.CONSUMER, {"hypercard.attempt": 2})

    assert first.status.status_code is StatusCode.ERROR and first.attributes["error.type"] == "RuntimeError"
    assert first.attributes["hypercard.outcome"] == "retried"
    assert "failing attempt" not in str(first.status.description) and not first.events  # the type, not the message
    assert retry.attributes["hypercard.outcome"] == "handled"
    (link,) = retry.links
    assert link.context.span_id == first.context.span_id and link.context.trace_id == first.context.trace_id
    # Both attempts are children of the push: one trace tells the event's story.
    for attempt in (first, retry):
        assert attempt.context.trace_id == pushed.context.trace_id
        assert attempt.parent.span_id == pushed.context.span_id


async def test_a_replayed_dead_letter_links_to_the_attempt_that_gave_up_in_the_push_trace(
    make_gateway, make_worker, db, sign, amqp, traced
):
    tracing, exporter = traced
    gateway = await make_gateway(tracing=tracing)
    await make_worker(KIND, tracing=tracing)
    await push(gateway, sign, token="given-up", outcome="give_up")
    (gave_up,) = await eventually(attempt_spans(exporter))
    assert gave_up.attributes["hypercard.outcome"] == "dead_lettered" and gave_up.attributes["error.type"] == "GiveUp"

    result = await replay(amqp, topology.dead_queue(KIND), ReplayFilter())  # the copy keeps the trace headers
    assert len(result.moved) == 1
    (replayed,) = [span for span in await eventually(attempt_spans(exporter, 2)) if span is not gave_up]
    (pushed,) = finished(exporter, SpanKind.SERVER)
    assert replayed.attributes["hypercard.attempt"] == 1  # a replay starts again
    assert replayed.parent.span_id == pushed.context.span_id
    assert [link.context.span_id for link in replayed.links] == [gave_up.context.span_id]


async def test_a_batch_transaction_links_to_each_delivery_and_each_stays_in_its_own_trace(
    make_gateway, make_worker, db, sign, traced
):
    tracing, exporter = traced
    gateway = await make_gateway(tracing=tracing)
    for n in range(5):  # queued before the worker starts: delivered together, handled in one transaction
        await push(gateway, sign, token=f"batched-{n}")
    await make_worker(KIND, tracing=tracing)

    handled = await eventually(attempt_spans(exporter, 5))
    pushes = {span.attributes["hypercard.event_id"]: span for span in finished(exporter, SpanKind.SERVER)}
    for delivery in handled:
        pushed = pushes[delivery.attributes["hypercard.event_id"]]
        assert delivery.parent.span_id == pushed.context.span_id
        assert delivery.context.trace_id == pushed.context.trace_id
    (batch,) = [span for span in exporter.get_finished_spans() if span.name == "hypercard transaction"]
    assert batch.attributes["hypercard.batch.size"] == 5 and batch.parent is None
    assert {link.context.span_id for link in batch.links} == {delivery.context.span_id for delivery in handled}


@pytest.mark.parametrize("on", [True, False], ids=["tracing on", "tracing off"])
async def test_the_published_message_carries_the_push_span_only_while_tracing(make_gateway, db, amqp, sign, on):
    with tracing_in_memory() as (tracing, exporter):
        gateway = await make_gateway(tracing=tracing if on else None)
        await push(gateway, sign, token="carried")
        (message,) = await take(amqp, QUEUE)
    if on:
        (pushed,) = finished(exporter, SpanKind.SERVER)
        assert message.headers["traceparent"] == traceparent(pushed)
    else:
        assert "traceparent" not in message.headers and "tracestate" not in message.headers
        assert exporter.get_finished_spans() == ()


async def test_trace_headers_are_input_a_bad_one_starts_a_new_trace(make_worker, db, amqp, traced):
    tracing, exporter = traced
    garbage = {"traceparent": 12345, "last_traceparent": "00-not-a-span-01", "tracestate": {"vendor": "x"}}
    body = json.dumps({"notify_type": KIND, "token": "garbage-headers"}).encode()
    message = aio_pika.Message(body, headers={"event_id": "id-garbage", **garbage}, delivery_mode=2)
    await amqp.default_exchange.publish(message, routing_key=QUEUE)
    await make_worker(KIND, tracing=tracing)

    (handled,) = await eventually(attempt_spans(exporter))
    assert handled.parent is None and not handled.links
    assert handled.attributes["hypercard.outcome"] == "handled"
