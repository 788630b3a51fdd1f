"""What a user would write instead of the gateway: FastAPI + pydantic + aio-pika, a confirmed persistent publish,
no signature check. Installed by the `bench` extra only (`pip install -e '.[bench]'`), never by the project.

    python -m bench.fastapi_peer PORT AMQP_URL"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager

import aio_pika
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict


class Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    notify_type: str


def create(amqp_url: str) -> FastAPI:
    exchange: list[aio_pika.abc.AbstractExchange] = []

    @asynccontextmanager
    async def broker(app: FastAPI):
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        exchange.append(await channel.get_exchange("hypercard.events"))
        yield
        await connection.close()

    app = FastAPI(lifespan=broker)

    @app.post("/hc_sync/common")
    async def receive(request: Request) -> dict:
        body = await request.body()
        event = Event.model_validate_json(body)
        persistent = aio_pika.DeliveryMode.PERSISTENT
        message = aio_pika.Message(body, delivery_mode=persistent, content_type="application/json")
        await exchange[0].publish(message, routing_key=f"hypercard.{event.notify_type.lower()}")
        return {"code": 1, "msg": "ok", "data": {}}

    return app


if __name__ == "__main__":
    uvicorn.run(create(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop")
