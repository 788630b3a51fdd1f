"""What the shared broker logged about the tests' own vhost since a point in time: channel errors such as
406 PRECONDITION_FAILED (an ack for a tag the broker no longer holds closes the channel)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.broker import TEST_VHOST


def _log_file() -> Path:
    out = subprocess.run(["rabbitmqctl", "-q", "eval", "rabbit:log_locations()."], check=True, capture_output=True,
                         text=True, timeout=60).stdout  # fmt: skip
    paths = [part.strip(' "[]\n') for part in out.split(",")]
    return Path(next(path for path in paths if path.endswith(".log") and "upgrade" not in path))


class BrokerLog:
    """The broker's log from the moment this object is made."""

    def __init__(self) -> None:
        self.path = _log_file()
        self.start = self.path.stat().st_size

    def channel_errors(self) -> list[str]:
        """Lines since the start about a channel error in this suite's vhost."""
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode(errors="replace")
        # A channel error's entry names its vhost; its cause (precondition_failed: unknown delivery tag) is the next
        # line.
        lines = text.splitlines()
        return [
            f"{line}\n{lines[n + 1] if n + 1 < len(lines) else ''}"
            for n, line in enumerate(lines)
            if "Channel error" in line and f"vhost: '{TEST_VHOST}'" in line
        ]
