"""RabbitMQ policies in the tests' vhost, set with rabbitmqctl as an operator would."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.broker import TEST_VHOST


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def effective_policies() -> dict[str, str]:
    """The policy in effect on each queue of the tests' vhost ('' where none)."""
    lines = rabbitmqctl("list_queues", "-p", TEST_VHOST, "--no-table-headers", "name", "policy").splitlines()
    return {name: policy.strip() for name, _, policy in (line.partition("\t") for line in lines)}


def wait_for_policy(queues: list[str], policy: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(effective_policies().get(queue) != policy for queue in queues):
        if time.monotonic() > deadline:
            raise AssertionError(f"policy {policy!r} not in effect on {queues}: {effective_policies()}")
        time.sleep(0.2)


@contextmanager
def policy(pattern: str, definition: dict[str, object], name: str = "test-policy") -> Iterator[None]:
    """A policy on the queues matching `pattern` for the duration, in effect when the block starts."""
    rabbitmqctl("set_policy", "-p", TEST_VHOST, name, pattern, json.dumps(definition), "--apply-to", "queues",
                "--priority", "100")  # fmt: skip
    try:
        queues = [queue for queue in effective_policies() if re.fullmatch(pattern, queue)]
        wait_for_policy(queues, name)
        yield
    finally:
        rabbitmqctl("clear_policy", "-p", TEST_VHOST, name)
