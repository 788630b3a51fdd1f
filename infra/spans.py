"""The project's spans, over OpenTelemetry: the only module that imports it, and only imported when tracing is on
(`infra.tracing`). A push is a server span in the gateway; its context travels in the message's `traceparent` and
`tracestate` headers, and each attempt to handle it in a worker is a consumer span, its child: every attempt of one
push sits in the trace that push began. A retry or dead-letter copy also carries the failed attempt's own context in
`last_traceparent`, and the next attempt's span links to it.

Attributes name the event, never its content: kind, event id (a keyed digest), attempt, outcome, and the type of an
error, not its message (which may hold an e-mail or a code)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace import Span as Span  # re-exported: the type the gateway and the workers hold
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# W3C trace context only, whatever OTEL_PROPAGATORS says: these header names are part of the message's format.
PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"
LAST_TRACEPARENT = "last_traceparent"  # the failed attempt's span, on a retry or dead-letter copy
MAX_TEXT = 80  # a notify_type is input: attributes hold at most this much of it


class _TextHeaders(Getter[Mapping[str, Any]]):
    """Headers are input: only a text value is read (an AMQP header may be a number, bytes or a table)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


TEXT_HEADERS = _TextHeaders()


def process_tracing(service_name: str, exporters: Sequence[str]) -> Tracing:
    """The process's tracing, exporting to `exporters` (`otlp`, `console`), its provider OpenTelemetry's global one
    too; the rest (sampler, resource, endpoint, batching) the SDK reads from the standard OTEL_* variables."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # no OTEL_SERVICE_NAME
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return Tracing(provider)


def _exporter(name: str) -> SpanExporter:
    if name == "console":  # one JSON line per span, like the log lines it sits between on stdout
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class Tracing:
    """Starts and ends the project's spans on `provider`'s tracer."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("hypercard")

    def shutdown(self) -> None:
        """Export what is still buffered; at the end of the process."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    # The gateway

    def push_started(self, path: str, request_headers: Mapping[str, str]) -> Span:
        """A push's server span. A new trace, never the child of a `traceparent` the request brings: the sender is
        the internet (the platform sends none), and a parent chosen by a client would choose our trace ids and our
        sampling. A load balancer's context is linked instead, so its trace still leads here."""
        incoming = trace.get_current_span(PROPAGATOR.extract(request_headers, getter=TEXT_HEADERS)).get_span_context()
        links = [Link(incoming, {"hypercard.link": "request traceparent"})] if incoming.is_valid else None
        return self._tracer.start_span(
            "hypercard push",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root, whatever is current
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "url.path": path[:MAX_TEXT]},
            links=links,
        )

    def message_headers(self, span: Span) -> dict[str, str]:
        """`traceparent` (and `tracestate`) of `span`, for the message it publishes."""
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def push_ended(self, span: Span, status: int, line: Mapping[str, object]) -> None:
        """End a push's span with what its canonical log line says: kind, event id, outcome, status."""
        span.set_attribute("http.response.status_code", status)
        for attribute, key in (("hypercard.notify_type", "kind"), ("hypercard.event_id", "event_id"),
                               ("hypercard.outcome", "outcome"), ("hypercard.signature_outcome", "signature_outcome"),
                               ("hypercard.confirm_ms", "confirm_ms")):  # fmt: skip
            value = line.get(key)
            if isinstance(value, float):
                span.set_attribute(attribute, value)
            elif value is not None:
                span.set_attribute(attribute, str(value)[:MAX_TEXT])
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, str(line.get("outcome", ""))[:MAX_TEXT]))
        span.end()

    # The workers

    def delivery_started(
        self, queue: str, headers: Mapping[str, Any], *, kind: str, event_id: str, attempt: int, message_id: str | None
    ) -> Span:
        """One attempt's consumer span: the child of the context the message carries (the gateway's push span; a
        new trace if it carries none), linked to the failed attempt a retry copy names."""
        previous = trace.get_current_span(
            PROPAGATOR.extract({TRACEPARENT: headers.get(LAST_TRACEPARENT)}, getter=TEXT_HEADERS)
        ).get_span_context()
        links = [Link(previous, {"hypercard.link": "previous attempt"})] if previous.is_valid else None
        attributes: dict[str, str | int] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "hypercard.notify_type": kind,
            "hypercard.event_id": event_id[:MAX_TEXT],
            "hypercard.attempt": attempt,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id[:MAX_TEXT]
        return self._tracer.start_span(
            f"process {queue}",
            context=PROPAGATOR.extract(headers, getter=TEXT_HEADERS),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )

    @staticmethod
    def current(span: Span) -> contextlib.AbstractContextManager[Span]:
        """`span` as the current span (the parent of the handler's own spans), without ending it. An exception is
        not recorded: its message may hold what a handler was given."""
        return trace.use_span(span, record_exception=False, set_status_on_exception=False)

    @contextlib.contextmanager
    def transaction(self, deliveries: Sequence[Span]) -> Iterator[Span]:
        """The span of one PostgreSQL transaction: the child of its delivery's span when it holds one delivery, else
        a span of its own linked to each delivery's (a batch)."""
        alone = len(deliveries) == 1
        span = self._tracer.start_span(
            "hypercard transaction",
            context=trace.set_span_in_context(deliveries[0] if alone else trace.INVALID_SPAN),
            attributes={"db.system.name": "postgresql", "hypercard.batch.size": len(deliveries)},
            links=None if alone else [Link(delivery.get_span_context()) for delivery in deliveries],
        )
        try:
            with self.current(span):
                yield span
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            span.end()

    @staticmethod
    def failed(span: Span, error_type: str) -> None:
        """An attempt failed: its error's type, never its message."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))

    def carried(self, span: Span) -> dict[str, str]:
        """The header a retry or dead-letter copy carries, so that the next attempt's span links to this one."""
        traceparent = self.message_headers(span).get(TRACEPARENT)
        return {LAST_TRACEPARENT: traceparent} if traceparent else {}

    @staticmethod
    def delivery_ended(span: Span, outcome: str) -> None:
        span.set_attribute("hypercard.outcome", outcome)
        span.end()
