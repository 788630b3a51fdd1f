"""The HTTP server under the app: the limits on a request's head, malformed HTTP answered in the reply contract's
shape (aiohttp offers no hook for it, so its server and runner are subclassed here), and connections closed while
draining."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from gateway.app_keys import DRAINING, METRICS, SETTINGS
from gateway.metrics import GatewayMetrics
from gateway.replies import failure

# What one request may cost before any check: the platform sends about a dozen short headers; proxies add a few.
MAX_HEADERS = 64  # header lines
MAX_FIELD_SIZE = 8190  # bytes of one header line (aiohttp's own default, stated here)
MAX_LINE_SIZE = 8190  # bytes of the request line
# Bytes of one request's head in all (request line and header lines): what a connection that never finishes its
# head can make the gateway hold (aiohttp's own bound is MAX_HEADERS * MAX_FIELD_SIZE, half a megabyte).
MAX_HEAD_BYTES = 32768
log = structlog.get_logger("gateway")


class HeadTooLarge(BadHttpMessage):
    code = 431


class TooManyConnections(BadHttpMessage):
    code = 503


class ContractRequestHandler(web.RequestHandler):
    """Requests that are not even valid HTTP (a bad header line, a bad method) are answered in the contract's
    shape too, where aiohttp would answer plain text. A head over MAX_HEAD_BYTES is answered 431 as soon as that
    many bytes are waiting, and a connection over HC_MAX_CONNECTIONS 503, before anything else is read."""

    _head_bytes = 0  # bytes of the head being received, counted while no request body is being read
    _body: StreamReader = EMPTY_PAYLOAD  # the body of the last request parsed
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        if isinstance(server, ContractServer):
            server.metrics.open_connections.inc()
            if len(server.connections) > server.max_connections:
                self._refuse(TooManyConnections(f"more than {server.max_connections} connections open"), 503)

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(self._manager, ContractServer):
            self._manager.metrics.open_connections.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # Private attributes of RequestHandler, read only: the parsed requests waiting to be handled.
        waiting = len(self._messages)
        # Asked before the parser reads them: bytes that end a body make it complete, and are still the body's.
        in_body = not self._body.is_eof()
        super().data_received(data)
        parsed = list(self._messages)[waiting:]
        if parsed:
            self._head_bytes = 0
            self._body = parsed[-1][1]
            for message, _ in parsed:
                if not isinstance(message, _ErrInfo) and _head_size(message.raw_headers) > MAX_HEAD_BYTES:
                    self._refuse(HeadTooLarge(f"request head over {MAX_HEAD_BYTES} bytes"), 431)
        elif not in_body:  # between requests, or within a head: the bytes are the head's
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(HeadTooLarge(f"request head over {MAX_HEAD_BYTES} bytes"), 431)

    def _refuse(self, exc: BadHttpMessage, status: int) -> None:
        """Answer `exc` (in the contract's shape, by handle_error) in place of any request, then close."""
        # The same queue entry aiohttp makes of a parse error (RequestHandler.data_received): a private type.
        self._refused = True
        self._messages.clear()
        self._messages.append((_ErrInfo(status=status, exc=exc, message=exc.message), EMPTY_PAYLOAD))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if isinstance(self._manager, ContractServer):
            self._manager.metrics.connections_refused.labels(type(exc).__name__).inc()

    def close_when_idle(self) -> None:
        """Draining: close the connection now if it is waiting for a request, otherwise after the reply."""
        # aiohttp's own idle test (RequestHandler._process_keepalive): a pending waiter means no request is being
        # read or handled. Private attribute, read only; pinned by tests/gateway/test_drain.py.
        if self._waiter is not None and not self._waiter.done():
            self.force_close()
        else:
            self.close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        log.info("malformed HTTP request", status=status, error=type(exc).__name__ if exc else None)
        if isinstance(exc, TooManyConnections):
            response = failure(503, "too many connections open; the event was not stored, send it again")
        elif status >= 500:
            response = failure(503, "internal error; the event was not stored, send it again")
        elif _headers_too_large(exc):
            response = failure(
                431,
                f"request header fields too large: at most {MAX_HEAD_BYTES} bytes in all, {MAX_HEADERS} header "
                f"lines of {MAX_FIELD_SIZE} bytes",
            )
        else:
            response = failure(status, f"malformed HTTP request: {type(exc).__name__ if exc else 'bad request'}")
        response.force_close()
        return response


def _headers_too_large(exc: BaseException | None) -> bool:
    # aiohttp's parsers raise LineTooLong for a long line and a plain BadHttpMessage for too many header lines.
    return isinstance(exc, LineTooLong | HeadTooLarge) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message
    )


def _head_size(raw_headers: tuple[tuple[bytes, bytes], ...]) -> int:
    return sum(len(name) + len(value) + 4 for name, value in raw_headers)  # "name: value\r\n"


class ContractServer(web.Server):
    # Set by ContractAppRunner._make_server on the instance it re-classes.
    max_connections: int
    metrics: GatewayMetrics

    def __call__(self) -> web.RequestHandler:
        # Private attributes of web.Server (its loop and handler keyword arguments), as its own __call__ uses them.
        return ContractRequestHandler(self, loop=self._loop, **self._kwargs)

    def close_idle_connections(self) -> None:
        for connection in self.connections:
            if isinstance(connection, ContractRequestHandler):
                connection.close_when_idle()


class ContractAppRunner(web.AppRunner):
    """An AppRunner whose protocol-level errors keep the reply contract (aiohttp offers no hook for them), with the
    limits on header size stated, and request bodies never decompressed (a push with a Content-Encoding is refused:
    `gateway.body.read_body`)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_headers", MAX_HEADERS)
        kwargs.setdefault("max_field_size", MAX_FIELD_SIZE)
        kwargs.setdefault("max_line_size", MAX_LINE_SIZE)
        kwargs.setdefault("auto_decompress", False)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server in this private method and offers no factory argument: the instance it built is
        # re-classed to ContractServer (same state; one overridden factory method, one added method).
        server = await super()._make_server()
        server.__class__ = ContractServer
        assert isinstance(server, ContractServer)
        server.max_connections = self.app[SETTINGS].max_connections
        server.metrics = self.app[METRICS]
        return server

    def close_idle_connections(self) -> None:
        if isinstance(self.server, ContractServer):
            self.server.close_idle_connections()


async def close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: while draining, every reply carries `Connection: close`, so no client keeps a
    connection to an instance that is about to close it."""
    if request.app[DRAINING].is_set():
        response.force_close()
        # The hook runs after aiohttp wrote its Connection header into the response's headers: say it here too.
        response.headers["Connection"] = "close"
