"""The essential work alone, the floor the gateway is measured against: aiohttp + uvloop, the msgspec tagged union,
SHA256withRSA over the sorted fields, a confirmed persistent publish with aiormq. No allow-list, quarantine,
metrics, logs or reconnects: what any correct receiver must do, and nothing more.

    python -m bench.essential PORT PUBLIC_KEY.pem AMQP_URL"""

from __future__ import annotations

import base64
import sys

import aiormq
import msgspec
import uvloop
from aiohttp import web
from aiormq import spec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from schemas.events import EVENT_DECODER

OK = b'{"code":1,"msg":"ok","data":{}}'
SIGNED = ("api-key", "timestamp", "nonce", "version", "lang")
FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def text(raw: msgspec.Raw) -> str:
    value = bytes(raw)
    return msgspec.json.decode(value, type=str) if value[:1] == b'"' else value.decode()


def main(port: int, key_file: str, amqp_url: str) -> None:
    key = serialization.load_pem_public_key(open(key_file, "rb").read())
    channel: list[aiormq.abc.AbstractChannel] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        event = EVENT_DECODER.decode(body)
        items = {name: value for name in SIGNED if (value := request.headers.get(name))}
        items |= {name: value for name, raw in FIELDS.decode(body).items() if (value := text(raw))}
        message = "&".join(f"{name}={items[name]}" for name in sorted(items)).encode()
        key.verify(base64.b64decode(request.headers["signature"]), message, padding.PKCS1v15(), hashes.SHA256())
        properties = spec.Basic.Properties(delivery_mode=2, content_type="application/json")
        await channel[0].basic_publish(
            body, exchange="hypercard.events", routing_key=f"hypercard.{event.kind().lower()}", properties=properties
        )
        return web.Response(body=OK, content_type="application/json")

    async def connect(app: web.Application):
        connection = await aiormq.connect(amqp_url)
        channel.append(await connection.channel(publisher_confirms=True))
        yield
        await connection.close()

    app = web.Application()
    app.router.add_post("/hc_sync/common", receive)
    app.cleanup_ctx.append(connect)
    uvloop.run(web._run_app(app, host="127.0.0.1", port=port, access_log=None, print=None))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
