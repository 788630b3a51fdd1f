"""No OTP code, e-mail, mobile number, signature or key material in any log line, whatever the call site."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from gateway.send import generate_keys, load_private_key, sample_body, sample_names, signed_headers
from schemas.logs import REDACTED, redact_secrets
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process, worker_process
from tests.workers.conftest import eventually


def test_processor_drops_secret_keys_and_masks_secret_values():
    event = {
        "event": "oops: body was {'email': 'someone@example.com', 'mobile': '+8613800138000'}",
        "code": "888666",
        "signature": "c2lnbmF0dXJl",
        "nested": {"otp": "123456", "fine": "ok"},
        "key": "-----BEGIN PUBLIC KEY-----\nMIGf\n-----END PUBLIC KEY-----",
        "card_id": "6654358889900018888",
        "status": 200,
    }
    out = redact_secrets(None, "info", dict(event))
    assert out["code"] == out["signature"] == out["key"] == REDACTED
    assert out["nested"] == {"otp": REDACTED, "fine": "ok"}
    assert "someone@example.com" not in out["event"] and "8613800138000" not in out["event"]
    assert out["card_id"] == event["card_id"] and out["status"] == 200


@pytest.mark.broker
@pytest.mark.database
async def test_logs_of_all_nine_samples_through_gateway_and_workers_hold_no_secret(tmp_path, amqp):
    from tests.workers.conftest import reset_database

    await reset_database()
    private, _ = generate_keys(tmp_path)
    key = load_private_key(private)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_DRAIN_SECONDS": "0", "HC_LOG_LEVEL": "debug"})
    worker = worker_process(tmp_path, "--all", env={"HC_LOG_LEVEL": "debug"})
    signatures = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        async with aiohttp.ClientSession() as session:
            for name in sample_names():
                body = sample_body(name)
                headers = signed_headers(key, body, "merchant-1")
                signatures.append(headers["signature"])
                async with session.post(
                    f"http://127.0.0.1:{port}/hc_sync/common",
                    data=body,
                    headers={**headers, "Content-Type": "application/json"},
                ) as reply:
                    assert reply.status == 200
                # A forged one too: refusals are logged as well.
                async with session.post(
                    f"http://127.0.0.1:{port}/hc_sync/common",
                    data=body,
                    headers={**headers, "signature": "Zm9yZ2Vk", "Content-Type": "application/json"},
                ) as reply:
                    assert reply.status == 401

        async def all_handled() -> bool:
            return len(worker.events(event="message", outcome="handled")) >= 9

        await eventually(all_handled, timeout=20)
    finally:
        gateway.stop()
        worker.stop()

    logs = gateway.output + worker.output
    lines = logs.splitlines()
    assert len(lines) > 20 and all(json.loads(line) for line in lines)
    secrets = ["example@gmail.com", "18301523750", "888666", "Zm9yZ2Vk", "BEGIN", *signatures]
    secrets += [(tmp_path / "platform-public.pem").read_text().splitlines()[1]]
    for secret in secrets:
        assert secret not in logs, f"{secret!r} reached the logs"
