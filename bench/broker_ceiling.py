"""Broker ceiling: confirmed, persistent publishes of the sample bodies straight to hypercard.events with the
project's own Publisher, many in flight, no HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from gateway import envelope
from gateway.publisher import Publisher
from gateway.signature import SignatureOutcome
from schemas import topology
from schemas.samples import sample_body, sample_names


async def measure(url: str, seconds: float, in_flight: int = 128) -> float:
    """Confirmed publishes per second."""
    publisher = Publisher([url], publish_timeout=10)
    await publisher.start(wait=10)
    bodies = [sample_body(name) for name in sample_names()]
    kinds = [json.loads(body)["notify_type"] for body in bodies]
    samples = itertools.cycle(list(zip(bodies, kinds, strict=True)))
    done = 0
    deadline = time.perf_counter() + seconds

    async def publish_loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            body, kind = next(samples)
            properties = envelope.properties(
                kind=kind,
                event_id="0" * 32,
                client_ip="127.0.0.1",
                path="/hc_sync/common",
                signature_outcome=SignatureOutcome.VALID,
                request_headers={"api-key": "k", "timestamp": "1", "nonce": "n", "version": "1.0", "signature": "s"},
                verdict=envelope.Verdict("accepted", topology.routing_key(kind)),
            )
            await publisher.publish_confirmed(body, topology.routing_key(kind), properties)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(publish_loop() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    await publisher.close()
    return done / elapsed


if __name__ == "__main__":
    import sys

    import uvloop

    from infra.logs import configure_logging

    configure_logging("warning")
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    print(f"{uvloop.run(measure('amqp://guest:guest@127.0.0.1:5672/', seconds)):.0f} confirmed publishes/s")
