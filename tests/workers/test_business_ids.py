"""The canonical lines carry each event's business ids (its trade, card, operation, auth, purchase), so a support
question about one recharge finds its event id with a log search; never a secret or personal value beside them."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from schemas.events import KNOWN_EVENTS
from schemas.samples import sample_body, sample_names
from tests.support.keys import write_public_keys
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process, worker_process
from tests.support.waiting import eventually

pytestmark = [pytest.mark.broker, pytest.mark.database]
PATH = "/hc_sync/common"
EVENT_TYPES = {event_type.kind(): event_type for event_type in KNOWN_EVENTS}


async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        assert response.status == 200, await response.text()


def named_fields(line: dict, sample: dict) -> dict:
    """The sample's fields that a log line shows with their values (notify_type is on every line; a line's own key of
    the same name, BUY_COIN's `status` beside the HTTP status, holds another value)."""
    return {name: value for name, value in sample.items() if name != "notify_type" and line.get(name) == value}


async def test_each_kinds_request_and_message_lines_carry_its_business_ids_and_no_secret(
    db, amqp, sign, platform_key, tmp_path
):
    write_public_keys(tmp_path / "platform-public.pem", platform_key)
    port = free_port()
    gateway = gateway_process(tmp_path, port)
    worker = worker_process(tmp_path, "--all")
    samples = {json.loads(sample_body(name))["notify_type"]: json.loads(sample_body(name)) for name in sample_names()}
    assert set(samples) == set(EVENT_TYPES)
    signatures = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        for name in sample_names():
            headers = sign(sample_body(name))
            signatures.append(headers["signature"])
            await post(f"http://127.0.0.1:{port}{PATH}", sample_body(name), headers)
        for kind in samples:
            await eventually(lambda kind=kind: _settled(worker, kind), timeout=30)
    finally:
        gateway.stop()
        worker.stop()

    for kind, sample in samples.items():
        expected = {name: sample[name] for name in EVENT_TYPES[kind].business_ids}
        [request] = gateway.events(event="request", kind=kind)
        [message] = worker.events(event="message", kind=kind)
        assert request["outcome"] == "accepted" and message["outcome"] == "handled", (request, message)
        assert request["event_id"] == message["event_id"]
        assert named_fields(request, sample) == expected, request
        assert named_fields(message, sample) == expected, message
    # The search the README shows: a trade number finds the recharge's event id on both sides.
    trade = samples["RECHARGE"]["mc_trade_no"]
    found = gateway.events(mc_trade_no=trade) + worker.events(mc_trade_no=trade)
    assert [line["event"] for line in found] == ["request", "message"]
    assert {line["event_id"] for line in found} == {gateway.events(event="request", kind="RECHARGE")[0]["event_id"]}

    secrets = [
        *(str(samples[kind][name]) for kind, event_type in EVENT_TYPES.items() for name in event_type.sensitive),
        samples["AUTH_3DS"]["card_no"],
        *signatures,
    ]
    assert {"888666", "example@gmail.com", "18301523750", "103411******3333"} <= set(secrets)
    output = gateway.output + worker.output
    assert [secret for secret in secrets if secret in output] == []


async def _settled(worker, kind: str) -> list[dict]:
    return worker.events(event="message", kind=kind)


async def test_an_unverified_events_ids_are_logged_with_its_outcome_and_an_unknown_or_invalid_one_has_none(
    amqp, sign, platform_key, other_key, tmp_path
):
    write_public_keys(tmp_path / "platform-public.pem", platform_key)
    port = free_port()
    gateway = gateway_process(tmp_path, port, env={"HC_SIGNATURE_MODE": "monitor"})
    recharge = json.loads(sample_body("recharge"))
    forged = json.dumps(recharge | {"mc_trade_no": "F" * 500}).encode()
    invalid = json.dumps(recharge | {"result": 7}).encode()
    unknown = json.dumps({"notify_type": "CARD_STATUS_CHANGE", "card_id": "c-9", "mc_trade_no": "T-9"}).encode()
    try:
        await asyncio.to_thread(wait_until_ready, port)
        url = f"http://127.0.0.1:{port}{PATH}"
        await post(url, forged, sign(forged, key=other_key))  # another key: kept in hypercard.unverified
        await post(url, invalid, sign(invalid))
        await post(url, unknown, sign(unknown))
        await eventually(lambda: _requests(gateway, 3))
    finally:
        gateway.stop()
    by_outcome = {line["outcome"]: line for line in gateway.events(event="request")}
    assert set(by_outcome) == {"unverified", "quarantined", "unknown_kind"}
    # A body the signature does not vouch for: its ids as it decodes, bounded, and the line says it is unverified.
    unverified = by_outcome["unverified"]
    assert (unverified["card_id"], unverified["mc_trade_no"]) == (recharge["card_id"], "F" * 64)
    for outcome in ("quarantined", "unknown_kind"):  # nothing decoded: no ids, whatever the body holds
        assert not {"card_id", "mc_trade_no"} & set(by_outcome[outcome]), by_outcome[outcome]


async def _requests(gateway, count: int) -> bool:
    return len(gateway.events(event="request")) == count


async def test_an_e_mail_or_a_mobile_sent_as_a_business_id_reaches_no_log_line(db, amqp, sign, platform_key, tmp_path):
    # A merchant that numbers its orders by the customer's mobile, or a body that puts an e-mail where the trade
    # number goes: a business id is logged as it is, but personal data never, whatever field it came in.
    write_public_keys(tmp_path / "platform-public.pem", platform_key)
    port = free_port()
    gateway = gateway_process(tmp_path, port)
    worker = worker_process(tmp_path, "OPEN_CARD", "RECHARGE")
    open_card = json.loads(sample_body("open_card"))
    by_mobile = json.dumps(open_card | {"mc_trade_no": open_card["mobile"]}).encode()
    by_email = json.dumps(json.loads(sample_body("recharge")) | {"mc_trade_no": "alice.smith@example.org"}).encode()
    try:
        await asyncio.to_thread(wait_until_ready, port)
        for body in (by_mobile, by_email):
            await post(f"http://127.0.0.1:{port}{PATH}", body, sign(body))
        for kind in ("OPEN_CARD", "RECHARGE"):
            await eventually(lambda kind=kind: _settled(worker, kind), timeout=30)
    finally:
        gateway.stop()
        worker.stop()
    lines = [*gateway.events(event="request"), *worker.events(event="message")]
    assert [line["outcome"] for line in lines] == ["accepted", "accepted", "handled", "handled"], lines
    output = gateway.output + worker.output
    assert [secret for secret in (open_card["mobile"], "alice.smith@example.org") if secret in output] == []
