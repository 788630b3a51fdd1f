"""HTTP ceiling: a bare aiohttp handler that reads the body and answers the reply contract, nothing else."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from gateway.replies import OK_BODY


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=OK_BODY, content_type="application/json")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/hc_sync/common", answer)
    uvloop.run(web._run_app(app, host="127.0.0.1", port=port, access_log=None, print=None))


if __name__ == "__main__":
    main(int(sys.argv[1]))
