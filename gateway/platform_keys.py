"""The platform's public keys (HC_PLATFORM_PUBLIC_KEY): read from their file, named by fingerprint, and read again
on SIGHUP or when the file changes, so that a key rotation needs no restart (README, "Rotating the platform key")."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.signature import SignatureVerifier

CHECK_EVERY_SECONDS = 2.0  # how often the file's state is looked at: one stat() call
log = structlog.get_logger("gateway")
FileState = tuple[int, int, int, int] | None


def load_public_keys(data: bytes) -> list[rsa.RSAPublicKey]:
    """Every RSA public key in a file: PEM blocks (public keys or certificates), or bare base64 DER lines as the
    merchant platform shows them for copying."""
    keys: list[object] = []
    if b"-----BEGIN" in data:
        for block in data.split(b"-----END")[:-1]:
            start = block.find(b"-----BEGIN")
            kind = block[start + len(b"-----BEGIN ") :].split(b"-----", 1)[0].strip()
            pem = block[start:] + b"-----END " + kind + b"-----\n"
            if kind == b"CERTIFICATE":
                keys.append(x509.load_pem_x509_certificate(pem).public_key())
            else:
                keys.append(serialization.load_pem_public_key(pem))
    else:
        for line in data.split():
            keys.append(serialization.load_der_public_key(base64.b64decode(line)))
    rsa_keys = [key for key in keys if isinstance(key, rsa.RSAPublicKey)]
    if len(rsa_keys) != len(keys):
        raise ValueError("the key file holds a key that is not an RSA public key")
    return rsa_keys


def file_state(path: Path) -> FileState:
    """What changes when the file is written or replaced (a Kubernetes Secret volume swaps a symlink)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class PlatformKeyFile:
    """HC_PLATFORM_PUBLIC_KEY and the verifier holding its keys. A file that does not load at start-up stops the
    gateway; one that does not load later keeps the keys in use: a gateway never runs without keys."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._state = file_state(self.path)
        self.verifier = SignatureVerifier(load_public_keys(self.path.read_bytes()))
        log.info("platform keys loaded", path=str(self.path), fingerprints=self.verifier.fingerprints, pid=os.getpid())

    def reload(self, cause: str) -> bool:
        """Read the file again; True if its keys are now the ones in use."""
        self._state = file_state(self.path)
        before = self.verifier.fingerprints
        try:
            self.verifier.replace_keys(load_public_keys(self.path.read_bytes()))
        except Exception as error:  # whatever is wrong with the new file (cryptography raises several types)
            log.error(
                "platform keys NOT reloaded: the keys in use are kept; fix the file and reload again",
                cause=cause, path=str(self.path), error=f"{type(error).__name__}: {error}", fingerprints=before,
                pid=os.getpid(),
            )  # fmt: skip
            return False
        after = self.verifier.fingerprints
        added, removed = [name for name in after if name not in before], [name for name in before if name not in after]
        log.info("platform keys reloaded", cause=cause, path=str(self.path), fingerprints=after, added=added,
                 removed=removed, pid=os.getpid())  # fmt: skip
        return True

    def changed(self) -> bool:
        """The file was written, replaced or removed since it was last read."""
        return file_state(self.path) != self._state
