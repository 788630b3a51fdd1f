"""Is there room on the local broker for a run that declares many queues? RabbitMQ 3.10 counts file handles (about
three per quorum queue) against its open-files limit less a margin; past it every new AMQP handshake hangs instead of
failing. `make test` and `make bench` ask this first and stop in one line, naming the cause and the fix.

    python -m infra.headroom --for tests      # exit 0: room enough; exit 2: one line saying why not

It asks `rabbitmqctl status` for the broker's own file-handle figures; a broker that does not report them (RabbitMQ
4.x dropped its file-handle cache) is judged by its queue count against QUEUES_PER_BROKER instead."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

# File handles a run needs free: the suite declares about 140 quorum queues in its vhost, the bench about 70, each
# costing RabbitMQ 3.10 about three handles, plus connections. Measured peaks with margin (README, Tests).
NEEDED = {"tests": 600, "bench": 300}
HANDLES_PER_QUEUE = 3
# The vhost each run deletes before it starts: what an interrupted run left there is room it gets back.
OWN_VHOST = {"tests": os.environ.get("HYPERCARD_TEST_VHOST", "hypercard_test"), "bench": "hypercard_bench"}
# Without file-handle figures: queues the broker may already hold for the run to start.
QUEUES_PER_BROKER = 2000
FIX = "raise the broker's open-files limit: sudo bash .ci/broker-open-files (README, Tests: the broker's limits)"


@dataclass(frozen=True)
class Broker:
    handle_limit: int | None  # None: the broker does not report file handles
    handles_used: int | None
    queues: int
    by_vhost: dict[str, int]


def measure_on(node: str | None = None) -> Broker:
    """The broker's file handles (limit and in use, where it reports them) and its queues in every vhost; `node`:
    another local node than rabbitmqctl's default (RABBITMQ_NODENAME)."""
    target = ["-n", node] if node else []

    def ctl(*args: str) -> str:
        command = ["rabbitmqctl", "-q", *target, *args]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout

    status = json.loads(ctl("status", "--formatter", "json"))
    handles = status.get("file_descriptors") or {}
    limit, used = handles.get("total_limit"), handles.get("total_used")
    by_vhost = {
        vhost: len(ctl("list_queues", "-p", vhost, "name").split()) for vhost in ctl("list_vhosts", "name").split()
    }
    return Broker(
        handle_limit=limit if isinstance(limit, int) else None,
        handles_used=used if isinstance(used, int) else None,
        queues=sum(by_vhost.values()),
        by_vhost=by_vhost,
    )


def shortfall(broker: Broker, needed: int, own_vhost: str | None = None) -> str | None:
    """Why a run needing `needed` free file handles would hang on this broker, or None when there is room. The queues
    of `own_vhost`, which the run deletes first (an interrupted run's), count as free."""
    reclaimed = broker.by_vhost.get(own_vhost, 0) if own_vhost else 0
    if broker.handle_limit is not None and broker.handles_used is not None:
        free = broker.handle_limit - broker.handles_used + reclaimed * HANDLES_PER_QUEUE
        if free < needed:
            return (
                f"RabbitMQ has {free} free file handles ({broker.handles_used} of {broker.handle_limit} in use, "
                f"{broker.queues} queues); this run needs {needed}: {FIX}"
            )
        return None
    if broker.queues - reclaimed > QUEUES_PER_BROKER:
        return f"RabbitMQ holds {broker.queues} queues, over {QUEUES_PER_BROKER} for this run: delete unused ones"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.headroom", description=__doc__.splitlines()[0])
    parser.add_argument("--for", dest="run", choices=sorted(NEEDED), default="tests", help="the run about to start")
    args = parser.parse_args(argv)
    # HYPERCARD_BROKER_HEADROOM: the file handles to ask for instead (a test of this check, a bigger run).
    needed = int(os.environ.get("HYPERCARD_BROKER_HEADROOM", NEEDED[args.run]))
    try:
        broker = measure_on()
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        print(f"cannot read the local RabbitMQ's status ({type(error).__name__}): is it running?", file=sys.stderr)
        return 2
    reason = shortfall(broker, needed, OWN_VHOST[args.run])
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
