"""Attacker's review of issue 26 (logs chosen by structure): the platform's headers are copied into a held message's
`platform_headers` as they were sent, whatever they hold.

In monitor mode an unsigned push is kept in hypercard.unverified, and `envelope.properties` copies `api-key`, `nonce`,
`timestamp`, `version`, `lang` and `signature` from the request as they are: no format check (a malformed one is only
the outcome `malformed`), no cut, no scrub. So an unauthenticated sender puts an 8 KB api-key holding an e-mail address
and a card number, or a `signature` of any text, into a held message's headers, where the notify_type and the reasons
are cut and scrubbed (tests/gateway/test_views.py::test_a_held_messages_headers_carry_no_wire_text_uncut_or_unscrubbed).
"""

from __future__ import annotations

import json

import pytest

from schemas import topology
from tests.support.broker import take

PATH = "/hc_sync/common"
OK = {"code": 1, "msg": "ok", "data": {}}
SECRETS = ("josé@example.com", "4111 1111 1111 1111", "cvv=123")
VALUE = " ".join(SECRETS) + " " + "x" * 5000

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("header", ["api-key", "signature", "nonce", "lang"])
async def test_a_held_messages_platform_headers_carry_no_wire_text_uncut_or_unscrubbed(
    make_gateway, amqp, sample, header
):
    client = await make_gateway(signature_mode="monitor")
    body = sample("open_card")
    headers = {
        "Content-Type": "application/json",
        "api-key": "merchant-1",
        "timestamp": "1710412477",
        "nonce": "Ab3dE6gH9j",
        "signature": "AAAA",
        header: VALUE,
    }
    assert await (await client.post(PATH, data=body, headers=headers)).json() == OK
    (message,) = await take(amqp, topology.UNVERIFIED_QUEUE)
    held = json.dumps(message.headers, default=str, ensure_ascii=False)
    leaked = [secret for secret in SECRETS if secret in held]
    assert not leaked and "x" * 100 not in held, (
        f"the {header} header reached the held message's headers: {leaked}, {len(held)} characters"
    )
