"""Tracing into memory, for tests that run the gateway and a worker in their own process: the SDK's
InMemorySpanExporter behind a provider of the test's own (never OpenTelemetry's global one)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from infra.spans import Tracing


@contextmanager
def tracing_in_memory() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield Tracing(provider), exporter
    finally:
        provider.shutdown()


def finished(
    exporter: InMemorySpanExporter, kind: SpanKind, attributes: Mapping[str, object] | None = None
) -> list[ReadableSpan]:
    """The ended spans of `kind` whose attributes include `attributes`."""
    wanted = attributes or {}
    return [
        span
        for span in exporter.get_finished_spans()
        if span.kind is kind and all(span.attributes.get(name) == value for name, value in wanted.items())
    ]


def traceparent(span: ReadableSpan) -> str:
    """The W3C `traceparent` header naming `span`."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
