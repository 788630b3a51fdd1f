"""RabbitMQ topology as plain data: the one source of truth for exchange and queue names and arguments.

Both the gateway and the workers declare it through `infra.declare`. Declaring an existing queue with other
arguments fails (PRECONDITION_FAILED), so nothing else may spell out queue arguments.

    hypercard.events (topic) --hypercard.<kind>-->  hypercard.<kind>          (quorum; delivery limit -> .dead)
        |                    --hypercard.invalid--> hypercard.invalid         (quorum; schema-invalid events)
        |                    --hypercard.unverified--> hypercard.unverified   (quorum; signature not vouching)
        +-- alternate exchange hypercard.unrouted (fanout) --> hypercard.unrouted (quorum; kinds nobody binds)
    hypercard.<kind>.retry.<ms>  (quorum, TTL <ms>, dead-letters back to hypercard.<kind>)
    hypercard.<kind>.dead        (quorum; handler gave up, out of attempts, or crash loop)
    hypercard.to-queue (direct) --<queue name>--> each kind's queue and dead queue, and the three holding queues:
        the operator tools' one way in (a replay into a kind's queue, a message kept at the tail of its queue), so
        the operator user needs no write on amq.default, which reaches every queue
"""

from __future__ import annotations

import re

EVENTS_EXCHANGE = "hypercard.events"
UNROUTED_EXCHANGE = "hypercard.unrouted"
TO_QUEUE_EXCHANGE = "hypercard.to-queue"  # a hyphen: no kind's queue can be named so
UNROUTED_QUEUE = "hypercard.unrouted"
INVALID_QUEUE = "hypercard.invalid"
INVALID_ROUTING_KEY = "hypercard.invalid"
UNVERIFIED_QUEUE = "hypercard.unverified"
UNVERIFIED_ROUTING_KEY = "hypercard.unverified"
DEFAULT_DELIVERY_LIMIT = 10
# Names no kind may have: a kind's routing key and queue are `hypercard.<kind in lower case>`, so a kind named after
# one of the topology's own names would be routed into a holding queue (UNVERIFIED: hypercard.unverified, held as
# `valid`), and a worker of that kind would consume it: events the signature never vouched for.
RESERVED_KIND_NAMES = frozenset(
    name.removeprefix("hypercard.").upper()
    for name in (EVENTS_EXCHANGE, UNROUTED_EXCHANGE, UNROUTED_QUEUE, INVALID_QUEUE, UNVERIFIED_QUEUE)
)

# The holding queues: nothing consumes them, and they have no dead-letter target. From RabbitMQ 4.0 a quorum queue
# drops a message delivered more than its delivery limit, 20 unless set, so theirs is set explicitly, by a policy
# (`rabbitmqctl set_policy`, README "Replaying"): a policy applies to queues that exist, while another queue
# argument would make every existing deployment's redeclaration fail (PRECONDITION_FAILED). Not -1 ("no limit" on
# 4.x): 3.x policies refuse it, and as a queue argument 3.x drops a message at its first requeue. A limit no look
# reaches, the same on 3.x and 4.x; hypercard-replay itself never requeues.
HOLDING_POLICY = "hypercard-holding"
HOLDING_PATTERN = r"^hypercard\.(invalid|unverified|unrouted|[^.]+\.dead)$"
HOLDING_DELIVERY_LIMIT = 100_000

# What a queue is declared with (x-arguments): text and whole numbers only, as AMQP field tables carry them.
QueueArguments = dict[str, str | int]
QUORUM: QueueArguments = {"x-queue-type": "quorum"}


RETRY_QUEUE_NAME = re.compile(r"hypercard\.[a-z0-9_]+\.retry\.([0-9]+)")


def routing_key(kind: str) -> str:
    """`OPEN_CARD` -> `hypercard.open_card`: the routing key and the name of the kind's queue."""
    return f"hypercard.{kind.lower()}"


def kind_queue(kind: str) -> str:
    return routing_key(kind)


def dead_queue(kind: str) -> str:
    return f"{kind_queue(kind)}.dead"


def retry_queue(kind: str, delay_seconds: float) -> str:
    return f"{kind_queue(kind)}.retry.{round(delay_seconds * 1000)}"


def retry_step(queue: str) -> float | None:
    """A retry queue's delay in seconds, from its name (`retry_queue`); None for any other queue."""
    found = RETRY_QUEUE_NAME.fullmatch(queue)
    return int(found.group(1)) / 1000 if found else None


def holding_policy_definition() -> dict[str, object]:
    """The policy's definition, as `rabbitmqctl set_policy` and the management API take it."""
    return {"delivery-limit": HOLDING_DELIVERY_LIMIT}


def _dead_letter_to(queue: str) -> QueueArguments:
    # At-least-once dead-lettering (RabbitMQ >= 3.10) keeps a message in its source queue until the target queue
    # confirmed it, so a dead-lettered message is never silently dropped. It requires overflow reject-publish.
    # The default exchange ("") routes by queue name: no extra exchange or binding to keep in step.
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def kind_queue_arguments(kind: str, delivery_limit: int) -> QueueArguments:
    # x-delivery-limit catches crash loops: a message whose handling kills the process is redelivered at most
    # this many times, then dead-lettered to hypercard.<kind>.dead.
    return {**QUORUM, "x-delivery-limit": delivery_limit, **_dead_letter_to(dead_queue(kind))}


def retry_queue_arguments(kind: str, delay_seconds: float) -> QueueArguments:
    # A queue per delay (not a per-message TTL): every message in it expires in order, so none waits behind a
    # longer delay at the head of the queue.
    return {**QUORUM, "x-message-ttl": round(delay_seconds * 1000), **_dead_letter_to(kind_queue(kind))}
