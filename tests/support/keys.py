"""Key pairs standing in for the platform's."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_key() -> rsa.RSAPrivateKey:
    """A 1024-bit RSA key, the size the platform uses."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def write_public_keys(path: Path, *keys: rsa.RSAPrivateKey) -> Path:
    """A PEM file with the public half of each key, as HC_PLATFORM_PUBLIC_KEY takes it."""
    path.write_bytes(
        b"".join(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            for key in keys
        )
    )
    return path
