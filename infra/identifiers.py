"""The key of every identifier derived from an event's content: the event id (logged, published as a header, stored in
the inbox) and the inbox key. Both are keyed BLAKE2b under the deployment secret HC_ID_SECRET, so what the logs, the
inbox and the message headers show cannot be turned back into a one-time code (10^6 guesses) or an e-mail address
without it. Every gateway and every worker is given the same secret: one event keeps one id and one inbox key
whichever process derives them, across restarts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from infra.settings import BrokerSettings, SettingsError

MIN_SECRET_CHARS = 32
MIN_DISTINCT_CHARS = 10
HOW_TO_GENERATE = "generate one with `openssl rand -hex 32`"
# BLAKE2b's personalisation: one secret, a key of its own per purpose, so no identifier can stand in for another.
EVENT_ID = b"hc.event-id"
INBOX_KEY = b"hc.inbox-key"
OUTBOX_KEY = b"hc.outbox-key"


class IdentifierKey:
    """Keyed digests under HC_ID_SECRET (and, during a rotation, HC_ID_SECRET_PREVIOUS). Never shown: its repr
    names the variable, not the value."""

    __slots__ = ("_key", "previous")

    def __init__(self, secret: str, previous: str | None = None) -> None:
        # BLAKE2b takes a key of at most 64 bytes: a longer secret is folded into one.
        self._key = hashlib.blake2b(secret.encode(), digest_size=64, person=b"hc.id-secret").digest()
        self.previous = IdentifierKey(previous) if previous else None

    def event_id(self, signed_body: bytes) -> str:
        """The id of an event: a digest of the body pairs its signature covers (so a retry has the same id)."""
        return hashlib.blake2b(signed_body, digest_size=16, key=self._key, person=EVENT_ID).hexdigest()

    def inbox_key(self, natural_key: str) -> str:
        """The inbox row's key for a notification key (which may hold a one-time code, an e-mail, a mobile)."""
        return hashlib.blake2b(natural_key.encode(), digest_size=32, key=self._key, person=INBOX_KEY).hexdigest()

    def outbox_key(self) -> bytes:
        """The AES-256 key that seals outbox payloads (workers.outbox): a one-time code is never stored in clear."""
        return hashlib.blake2b(b"outbox", digest_size=32, key=self._key, person=OUTBOX_KEY).digest()

    def __repr__(self) -> str:
        rotating = " and HC_ID_SECRET_PREVIOUS" if self.previous else ""
        return f"IdentifierKey(HC_ID_SECRET{rotating}, not shown)"


def identifier_key(settings: BrokerSettings) -> IdentifierKey:
    """The key from HC_ID_SECRET or HC_ID_SECRET_FILE (a Docker/Kubernetes secret), and HC_ID_SECRET_PREVIOUS during
    a rotation. Refused, naming the variable, if missing or too weak to stand 10^6 guesses per event."""
    secret = _secret(settings.id_secret, settings.id_secret_file, "HC_ID_SECRET")
    if secret is None:
        raise SettingsError(
            "HC_ID_SECRET: required (or HC_ID_SECRET_FILE): the secret that keys event ids and inbox keys, the same "
            f"for every gateway and worker; {HOW_TO_GENERATE}"
        )
    previous = _secret(settings.id_secret_previous, "", "HC_ID_SECRET_PREVIOUS")
    if previous == secret:
        raise SettingsError(
            f"HC_ID_SECRET_PREVIOUS: the same as HC_ID_SECRET; give the secret before the rotation ({HOW_TO_GENERATE})"
        )
    return IdentifierKey(secret, previous)


def _secret(value: str, file: str, variable: str) -> str | None:
    if value and file:
        raise SettingsError(f"{variable}: set {variable} or {variable}_FILE, not both ({HOW_TO_GENERATE})")
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as error:
            raise SettingsError(f"{variable}_FILE: cannot read {file}: {error.strerror} ({HOW_TO_GENERATE})") from None
        variable = f"{variable}_FILE"
    if not value:
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise SettingsError(
            f"{variable}: {len(value)} characters; give at least {MIN_SECRET_CHARS} characters ({HOW_TO_GENERATE})"
        )
    if len(set(value)) < MIN_DISTINCT_CHARS:
        raise SettingsError(
            f"{variable}: at least {MIN_DISTINCT_CHARS} different characters, it is a random key, not a password "
            f"({HOW_TO_GENERATE})"
        )
    return value
