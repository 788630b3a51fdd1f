"""The reply contract `{"code": 1, "msg": "ok", "data": {}}`, and a middleware that keeps every reply in it. The
server that keeps even malformed requests in it is `gateway.server`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog
from aiohttp import web

from gateway.errors import GatewayError

OK_BODY = b'{"code":1,"msg":"ok","data":{}}'
log = structlog.get_logger("gateway")


class Reply(msgspec.Struct):
    code: int
    msg: str
    data: dict[str, object] = {}


_encoder = msgspec.json.Encoder()


def ok() -> web.Response:
    return web.Response(body=OK_BODY, content_type="application/json")


def failure(status: int, message: str) -> web.Response:
    """Any non-1 code means "send it again"; the code repeats the HTTP status so both say the same thing."""
    return web.Response(status=status, body=_encoder.encode(Reply(status, message)), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def reply_contract(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors, unknown paths and wrong methods answer in the contract's shape: never HTML, never a stack trace."""
    try:
        return await handler(request)
    except GatewayError as error:
        return failure(error.status, str(error))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return failure(error.status, error.reason)
    except Exception:
        # Never a 500 to the platform: an unexpected fault answers 503, so the platform sends the event again.
        log.exception("unexpected error", path=request.path)
        return failure(503, "internal error; the event was not stored, send it again")
