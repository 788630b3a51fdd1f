"""The platform's nine example bodies (doc 2.2.4), one JSON file per kind, their loaders, and a generator of
distinct events made from them (for the tests' accounting harness and the benchmark)."""

from __future__ import annotations

import itertools
import json
import typing
import zlib
from importlib import resources

from schemas.events import KNOWN_EVENTS
from schemas.fields import Text

_FOLDER = resources.files(__name__)


def sample_names() -> list[str]:
    """`auth_3ds`, `buy_coin`, ...: the file names without `.json`."""
    return sorted(entry.name.removesuffix(".json") for entry in _FOLDER.iterdir() if entry.name.endswith(".json"))


def sample_body(name: str) -> bytes:
    """The exact bytes of one sample."""
    return (_FOLDER / f"{name}.json").read_bytes()


def unique_field(kind: str) -> str:
    """The kind's first documented text field: a different value there makes a different notification."""
    event_type = next(event for event in KNOWN_EVENTS if event.kind() == kind)
    hints = typing.get_type_hints(event_type)
    return next(name for name, hint in hints.items() if isinstance(hint, type) and issubclass(hint, Text))


# The fields that name what a notification is about (an auth, a trade, a purchase, an operation). The samples share
# them: distinct events made from the samples are about distinct things, as the platform's would be.
SUBJECT_FIELDS = ("auth_id", "mc_trade_no", "tx_id", "request_number")


def distinct_bodies(count: int, run: str) -> list[tuple[str, bytes]]:
    """(kind, body) of `count` distinct events cycling through the nine samples; `run` keeps runs apart."""
    templates = [json.loads(sample_body(name)) for name in sample_names()]
    run_number = zlib.crc32(run.encode()) * 10**6
    bodies = []
    for n, template in zip(range(count), itertools.cycle(templates), strict=False):
        body = dict(template)
        body[unique_field(body["notify_type"])] = f"{run}-{n}"
        for name in SUBJECT_FIELDS:
            if name in body:
                body[name] = run_number + n if isinstance(body[name], int) else f"{run}-{n}"
        bodies.append((body["notify_type"], json.dumps(body).encode()))
    return bodies
