"""HC_ID_SECRET: the key of every identifier derived from an event's content, loaded, checked and never shown."""

from __future__ import annotations

import pickle

import pytest

from gateway.settings import GatewaySettings
from infra.identifiers import IdentifierKey, identifier_key
from infra.log_fields import keep_named_fields
from infra.settings import SettingsError, load_settings
from tests.support.identifiers import OTHER_ID_SECRET, TEST_ID_SECRET
from workers.settings import WorkerSettings

SIGNED_BODY = b"card_id=c-1&code=482913&create_time=1700000000&notify_type=OPT_CODE"
NATURAL_KEY = "card_id=c-1&code=482913&create_time=1700000000"


def test_one_secret_gives_one_event_id_and_inbox_key_and_another_secret_others():
    first, again, other = IdentifierKey(TEST_ID_SECRET), IdentifierKey(TEST_ID_SECRET), IdentifierKey(OTHER_ID_SECRET)
    assert first.event_id(SIGNED_BODY) == again.event_id(SIGNED_BODY)
    assert first.inbox_key(NATURAL_KEY) == again.inbox_key(NATURAL_KEY)
    assert first.event_id(SIGNED_BODY) != other.event_id(SIGNED_BODY)
    assert first.inbox_key(NATURAL_KEY) != other.inbox_key(NATURAL_KEY)
    # One secret, two purposes: an event id is never an inbox key's prefix (keys derived per purpose).
    assert not first.inbox_key(SIGNED_BODY.decode()).startswith(first.event_id(SIGNED_BODY))
    assert len(first.event_id(SIGNED_BODY)) == 32 and len(first.inbox_key(NATURAL_KEY)) == 64


@pytest.mark.parametrize("kind", [GatewaySettings, WorkerSettings])
def test_the_secret_comes_from_hc_id_secret_or_a_file(kind, tmp_path):
    from_variable = identifier_key(load_settings(kind, {"HC_ID_SECRET": TEST_ID_SECRET}))
    secret_file = tmp_path / "id-secret"
    secret_file.write_text(TEST_ID_SECRET + "\n")  # as `openssl rand -hex 32 > file` writes it
    from_file = identifier_key(load_settings(kind, {"HC_ID_SECRET_FILE": str(secret_file)}))
    assert from_variable.event_id(SIGNED_BODY) == from_file.event_id(SIGNED_BODY)


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({}, "HC_ID_SECRET: required"),
        ({"HC_ID_SECRET": "too-short-secret"}, "at least 32 characters"),
        ({"HC_ID_SECRET": "ab" * 20}, "at least 10 different characters"),
        ({"HC_ID_SECRET_FILE": "/nonexistent/id-secret"}, "HC_ID_SECRET_FILE: cannot read"),
        ({"HC_ID_SECRET": TEST_ID_SECRET, "HC_ID_SECRET_FILE": "/run/secrets/id"}, "not both"),
        ({"HC_ID_SECRET": TEST_ID_SECRET, "HC_ID_SECRET_PREVIOUS": "short"}, "HC_ID_SECRET_PREVIOUS: "),
        ({"HC_ID_SECRET": TEST_ID_SECRET, "HC_ID_SECRET_PREVIOUS": TEST_ID_SECRET}, "the same as HC_ID_SECRET"),
    ],
)
def test_a_missing_or_weak_secret_is_refused_with_a_message_naming_the_variable(environ, says):
    with pytest.raises(SettingsError) as refused:
        identifier_key(load_settings(WorkerSettings, environ))
    message = str(refused.value)
    assert says in message and "openssl rand -hex 32" in message
    assert "too-short-secret" not in message and "abab" not in message  # the value itself is never repeated


def test_the_secret_is_in_no_repr_of_the_settings_or_the_key():
    environ = {"HC_ID_SECRET": TEST_ID_SECRET, "HC_ID_SECRET_PREVIOUS": OTHER_ID_SECRET}
    settings = load_settings(GatewaySettings, environ)
    key = identifier_key(settings)
    shown = [repr(settings), str(settings), repr(key), str(key), repr(pickle.loads(pickle.dumps(settings)))]
    for text in shown:
        assert TEST_ID_SECRET not in text and OTHER_ID_SECRET not in text
    assert "id_secret=<hidden>" in repr(settings) and "port=8080" in repr(settings)


def test_a_log_call_naming_the_secret_is_redacted():
    logged = keep_named_fields(
        None, "info", {"event": "settings", "id_secret": TEST_ID_SECRET, "id_secret_previous": "x"}
    )
    assert TEST_ID_SECRET not in str(logged) and logged["id_secret_previous"] == "[redacted]"
