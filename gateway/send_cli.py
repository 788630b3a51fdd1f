"""`hypercard-send`: sign and POST an event exactly as the HyperCard platform does, and print the reply.

hypercard-send --generate-keys .dev        # a development key pair: platform-private.pem, platform-public.pem
hypercard-send open_card                   # one of the nine built-in samples (or: all)
hypercard-send my-event.json --url http://127.0.0.1:8080/hc_sync/common   # your own body, signed as is

Works from any folder: HC_SEND_URL and HC_SEND_KEY stand for --url and --key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import string
import sys
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.signature import sign_request
from infra.commands import add_version
from schemas.samples import sample_body, sample_names

DEFAULT_URL = "http://127.0.0.1:8080/hc_sync/common"
DEFAULT_KEY = ".dev/platform-private.pem"
DEV_API_KEY = "dev-merchant"  # the development merchant's api key: `make run` sets HC_API_KEY to it


def generate_keys(folder: Path, bits: int = 1024) -> tuple[Path, Path]:
    """A development key pair standing in for the platform's (the platform uses 1024-bit RSA)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = folder / "platform-private.pem"
    public = folder / "platform-public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


def signed_headers(key: rsa.RSAPrivateKey, body: bytes, api_key: str, lang: str | None = None) -> dict[str, str]:
    """The headers the platform sends with a push: api-key, timestamp, nonce, version, [lang,] signature."""
    headers = {
        "api-key": api_key,
        "timestamp": str(int(time.time())),
        "nonce": "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(10)),
        "version": "1.0",
    }
    if lang:
        headers["lang"] = lang
    headers["signature"] = sign_request(key, headers, body)
    return headers


SEND_TIMEOUT = 30.0  # seconds for the whole exchange: a gateway that accepts and never answers is no gateway


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT)) as session:
        async with session.post(url, data=body, headers={**headers, "Content-Type": "application/json"}) as reply:
            return reply.status, await reply.text()


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hypercard-send", description=__doc__, formatter_class=_Help)
    parser.add_argument("event", nargs="?", help=f"a sample ({', '.join(sample_names())}, or all) or a JSON file")
    parser.add_argument("--url", default=os.environ.get("HC_SEND_URL", DEFAULT_URL), help="the push URL (HC_SEND_URL)")
    parser.add_argument(
        "--key", default=os.environ.get("HC_SEND_KEY", DEFAULT_KEY), help="the signing private key, PEM (HC_SEND_KEY)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("HC_API_KEY", DEV_API_KEY).split(",")[0].strip(),
        help=f"the api-key header (default: the first of HC_API_KEY, else {DEV_API_KEY}, as `make run` sets it)",
    )
    parser.add_argument("--lang", help="the optional lang header (en or zh-CN)")
    parser.add_argument("--generate-keys", metavar="DIR", help="write a development key pair into DIR and exit")
    add_version(parser)
    args = parser.parse_args(argv)

    if args.generate_keys:
        private, public = generate_keys(Path(args.generate_keys))
        print(f"private key (for hypercard-send): {private}\npublic key (HC_PLATFORM_PUBLIC_KEY): {public}")
        return
    if not args.event:
        parser.error("name a sample, all, or a JSON file")
    names = sample_names() if args.event == "all" else [args.event]
    if not Path(args.key).is_file():
        parser.exit(2, f"hypercard-send: no signing key at {args.key}: pass --key or set HC_SEND_KEY "
                       "(a development pair: hypercard-send --generate-keys .dev)\n")  # fmt: skip
    try:
        key = load_private_key(Path(args.key))
    except ValueError as error:
        parser.exit(2, f"hypercard-send: {args.key} is no RSA private key in PEM: {error}\n")
    failed = False
    for name in names:
        try:
            body = Path(name).read_bytes() if name.endswith(".json") or os.sep in name else sample_body(name)
            json.loads(body)  # refuse to send what is not JSON: the gateway would only answer 400
        except (OSError, ValueError, KeyError) as error:
            parser.exit(2, f"hypercard-send: {name}: not a sample nor a readable JSON file ({error})\n")
        try:
            status, reply = asyncio.run(post(args.url, body, signed_headers(key, body, args.api_key, args.lang)))
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            parser.exit(2, f"hypercard-send: no gateway answers at {args.url}: pass --url or set HC_SEND_URL "
                           f"({type(error).__name__})\n")  # fmt: skip
        print(f"{name}: HTTP {status} {reply}")
        failed |= status != 200
    sys.exit(1 if failed else 0)
