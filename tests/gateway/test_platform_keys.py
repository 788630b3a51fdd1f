"""The platform key file: every key in it, named by fingerprint, read again without a restart, never lost to a bad
file."""

from __future__ import annotations

import base64
import re
import subprocess

import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from gateway.app_keys import METRICS
from gateway.platform_keys import PlatformKeyFile, load_public_keys
from gateway.send_cli import signed_headers
from gateway.signature import Reading, SignatureVerifier, fingerprint, sign
from schemas import topology
from tests.support.broker import take
from tests.support.keys import write_public_keys
from tests.support.waiting import eventually

PATH = "/hc_sync/common"


def test_key_rotation_accepts_every_key_in_the_file(platform_key, other_key) -> None:
    pem = b"".join(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for key in (platform_key, other_key)
    )
    verifier = SignatureVerifier(load_public_keys(pem))
    assert len(verifier.keys) == 2
    for key in (platform_key, other_key):
        verified = verifier.verified_reading([Reading(b"m", b"")], sign(key, b"m"))
        assert verified is not None and verified.key == fingerprint(key.public_key())


def test_loads_a_bare_base64_key_as_the_merchant_platform_shows_it(platform_key) -> None:
    der = platform_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (key,) = load_public_keys(base64.b64encode(der) + b"\n")
    assert key.public_numbers() == platform_key.public_key().public_numbers()


def test_refuses_a_key_file_without_keys() -> None:
    with pytest.raises(ValueError):
        SignatureVerifier(load_public_keys(b""))


def test_the_fingerprint_is_the_one_the_readme_computes_with_openssl(tmp_path, platform_key) -> None:
    path = write_public_keys(tmp_path / "key.pem", platform_key)
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(path), "-outform", "DER"], capture_output=True, check=True
    ).stdout
    digest = subprocess.run(["sha256sum"], input=der, capture_output=True, check=True).stdout.decode()
    assert fingerprint(platform_key.public_key()) == f"sha256:{digest[:16]}"


def test_a_reload_takes_the_file_as_it_is_now_and_logs_the_fingerprints(tmp_path, platform_key, other_key) -> None:
    path = write_public_keys(tmp_path / "keys.pem", platform_key)
    with structlog.testing.capture_logs() as logs:
        key_file = PlatformKeyFile(path)
        assert not key_file.changed()
        write_public_keys(path, platform_key, other_key)
        assert key_file.changed()
        assert key_file.reload("SIGHUP") and not key_file.changed()
    old, new = fingerprint(platform_key.public_key()), fingerprint(other_key.public_key())
    assert key_file.verifier.fingerprints == [old, new]
    loaded, reloaded = logs
    assert loaded["event"] == "platform keys loaded" and loaded["fingerprints"] == [old]
    assert reloaded["event"] == "platform keys reloaded" and reloaded["added"] == [new] and reloaded["removed"] == []


@pytest.mark.parametrize("bad", [b"", b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n", None])
def test_a_file_that_does_not_load_keeps_the_keys_in_use(tmp_path, platform_key, bad) -> None:
    path = write_public_keys(tmp_path / "keys.pem", platform_key)
    key_file = PlatformKeyFile(path)
    if bad is None:
        path.unlink()
    else:
        path.write_bytes(bad)
    with structlog.testing.capture_logs() as logs:
        assert not key_file.reload("SIGHUP")
    assert key_file.verifier.fingerprints == [fingerprint(platform_key.public_key())]
    (error,) = logs
    assert error["log_level"] == "error" and "kept" in error["event"]
    assert not key_file.changed(), "a bad file is reported once, not at every check"


@pytest.mark.broker
async def test_a_changed_key_file_is_read_again_without_a_signal(make_gateway, amqp, tmp_path, platform_key, other_key):
    path = write_public_keys(tmp_path / "rotating.pem", platform_key)
    client = await make_gateway(platform_public_key=str(path))
    body = b'{"notify_type":"CONSUME","card_id":"1"}'

    async def push(key) -> int:
        headers = {**signed_headers(key, body, "merchant-1"), "Content-Type": "application/json"}
        return (await client.post(PATH, data=body, headers=headers)).status

    async def push_is(key, status: int) -> bool:
        return await push(key) == status

    assert [await push(platform_key), await push(other_key)] == [200, 401]
    write_public_keys(path, platform_key, other_key)  # no SIGHUP: the file's change is seen within seconds
    await eventually(lambda: push_is(other_key, 200))
    write_public_keys(path, other_key)
    await eventually(lambda: push_is(platform_key, 401))

    def verifications() -> dict[str, float]:
        exposition = client.server.app[METRICS].exposition().decode()
        found = re.findall(r'^hypercard_gateway_signature_key_verifications_total\{fingerprint="(.*)"\} (.*)$',
                           exposition, re.M)  # fmt: skip
        return {name: float(count) for name, count in found}

    before = verifications()
    assert [await push(platform_key), await push(other_key)] == [401, 200]
    after = verifications()
    old, new = fingerprint(platform_key.public_key()), fingerprint(other_key.public_key())
    assert after[old] == before[old] >= 1 and after[new] == before[new] + 1
    assert len(await take(amqp, topology.kind_queue("CONSUME"))) == after[old] + after[new]


@pytest.mark.broker
async def test_a_key_file_that_does_not_load_is_flagged_until_it_loads(make_gateway, amqp, tmp_path, platform_key):
    """hypercard_gateway_key_reload_failed (alert HypercardPlatformKeyFileNotLoading) is 1 while the file on disk does
    not load, the keys in use still verifying pushes, and back to 0 once a good file is read."""
    path = write_public_keys(tmp_path / "rotating.pem", platform_key)
    client = await make_gateway(platform_public_key=str(path))
    metrics = client.server.app[METRICS]
    body = b'{"notify_type":"CONSUME","card_id":"1"}'
    headers = {**signed_headers(platform_key, body, "merchant-1"), "Content-Type": "application/json"}

    async def flagged(value: float) -> bool:
        return metrics.registry.get_sample_value("hypercard_gateway_key_reload_failed") == value

    assert await flagged(0)
    path.write_bytes(b"-----BEGIN PUBLIC KEY-----\nhalf writ")
    await eventually(lambda: flagged(1))
    assert (await client.post(PATH, data=body, headers=headers)).status == 200
    write_public_keys(path, platform_key)
    await eventually(lambda: flagged(0))
    assert len(await take(amqp, topology.kind_queue("CONSUME"))) == 1
