"""Attacker's review of issue 26 (finding 3): wire text that the scrubber passes in clear.

An unauthenticated sender (monitor mode) chooses `notify_type`, which reaches the gateway's `request` line (`kind`,
free text: cut then scrubbed) and the held message's `notify_type` header (`scrub`). `infra.redaction` masks a number
of six digits or more only when its groups are joined by ` .-_()+/` (one or two of them), so a card number written
with commas, `|`, `;`, `:`, `*`, `~`, a tab, a no-break or thin space, or ` - ` passes whole; a 16-digit number with
one dot after 12 digits reads as an amount (`_DECIMAL`); a CVV or PIN after its name and a space (`cvv 123`, no `:`
or `=`) passes; and an address with a quoted local part (`"john"@example.com`) passes."""

from __future__ import annotations

import json

import pytest

from infra.log_fields import keep_named_fields
from infra.redaction import scrub
from schemas import topology
from tests.support.broker import take

PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}
# (what is sent, what must not be seen on the line or in the header)
LEAKS = {
    "comma": ("4111,1111,1111,1111", "4111,1111"),
    "pipe": ("4111|1111|1111|1111", "4111|1111"),
    "semicolon": ("4111;1111;1111;1111", "4111;1111"),
    "colon": ("4111:1111:1111:1111", "4111:1111"),
    "star": ("4111*1111*1111*1111", "4111*1111"),
    "tab": ("4111\t1111\t1111\t1111", "1111\\t1111"),
    "no_break_space": ("4111\u00a01111\u00a01111\u00a01111", "1111\u00a01111"),
    "spaced_dash": ("4111 - 1111 - 1111 - 1111", "1111 - 1111"),
    "amount_shaped_pan": ("411111111111.1111", "411111111111"),
    "cvv_after_space": ("cvv 123", "123"),
    "quoted_local_part": ('"john"@example.com', "example.com"),
}  # fmt: skip


@pytest.mark.xfail(strict=True, reason="the scrubber passes card numbers, CVVs and e-mails written in these forms")
@pytest.mark.parametrize("case", LEAKS)
def test_a_notify_type_reaches_the_request_line_scrubbed(case: str) -> None:
    sent, secret = LEAKS[case]
    line = keep_named_fields(None, "info", {"event": "request", "status": 200, "kind": f"X {sent} Y"})
    assert secret not in json.dumps(line, ensure_ascii=False), f"{case}: {line['kind']!r}"
    assert secret not in scrub(sent)


@pytest.mark.broker
@pytest.mark.xfail(strict=True, reason="the held message's notify_type header passes card numbers in these forms")
@pytest.mark.parametrize("case", ["comma", "pipe", "no_break_space", "spaced_dash", "amount_shaped_pan"])
async def test_a_notify_type_reaches_the_held_messages_header_scrubbed(make_gateway, amqp, sample, case: str) -> None:
    client = await make_gateway(signature_mode="monitor")
    sent, secret = LEAKS[case]
    body = json.dumps({**json.loads(sample("open_card")), "notify_type": f"X {sent} Y"}).encode()
    headers = {"Content-Type": "application/json", "signature": "AAAA"}
    assert await (await client.post(PATH, data=body, headers=headers)).json() == OK
    (message,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    assert secret not in message.headers["notify_type"], f"{case}: {message.headers['notify_type']!r}"
