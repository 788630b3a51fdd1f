"""The hand-written property encoding gives exactly the bytes pamqp gives."""

from __future__ import annotations

from aiormq import spec

from gateway import envelope
from gateway.signature import SignatureOutcome


def properties(validation_error: str | None = None):
    return envelope.properties(
        kind="OPEN_CARD",
        event_id="e" * 32,
        client_ip="10.1.2.3",
        path="/hc_sync/common",
        signature_outcome=SignatureOutcome.VALID,
        request_headers={"api-key": "k", "timestamp": "1710412477", "nonce": "Ab3dE6gH9j", "version": "1.0",
                         "signature": "c2ln", "lang": "zh-CN"},
        verdict=envelope.Verdict("quarantined" if validation_error else "accepted", "hypercard.x", validation_error),
    )  # fmt: skip


def reference(encoded) -> bytes:
    return spec.Basic.Properties(
        content_type=encoded.content_type,
        headers=encoded.headers,
        delivery_mode=encoded.delivery_mode,
        message_id=encoded.message_id,
        timestamp=encoded.timestamp,
        message_type=encoded.message_type,
        app_id=encoded.app_id,
    ).marshal()


def test_encoded_properties_match_pamqp_byte_for_byte():
    for error in (None, "OPEN_CARD: Expected `str` of length >= 6 - at `$.mobile` — ünïcode"):
        encoded = properties(error)
        assert encoded.marshal() == reference(encoded)


def test_encoded_properties_decode_back():
    encoded = properties()
    wire = encoded.marshal()
    decoded = spec.Basic.Properties()
    decoded.unmarshal(int.from_bytes(wire[:2]), wire[2:])
    assert decoded.headers["platform_headers"]["nonce"] == "Ab3dE6gH9j"
    assert decoded.delivery_mode == 2 and decoded.message_type == "OPEN_CARD"
    assert decoded.message_id == encoded.message_id
    assert decoded.timestamp == encoded.timestamp.replace(microsecond=0)
