"""One RabbitMQ user per role (per group of kinds for the workers), and what each may do: the configure, write and
read patterns of RabbitMQ's access control, as plain data. `hypercard-broker-setup` applies them, the README's
table shows them (a test compares), and the broker permission tests run each role against them.

RabbitMQ checks names, not what they do, so the design keeps every role off the operations it does not need:
- Declaring a queue with a dead-letter exchange needs `read` on the queue, and `configure` also allows deleting.
  So no role but the set-up (the broker's administrator, once per deployment) declares the exchanges, the holding
  queues or the kinds' queues; the gateway and the workers check that they exist (a passive declare needs no
  permission). The workers declare only their own kinds' retry queues, created as their handlers ask for them.
- Reading a queue allows purging it: a worker group may purge its own kinds' queues, no other.
- Publishing through the default exchange (`amq.default`) reaches any queue by name: the workers need it for
  retries and dead letters (a retry queue is declared by its worker, which may not bind it to anything). The
  operator tools publish through `hypercard.to-queue` only, bound to each kind's queue and dead queue and to the
  holding queues by name: a replay, and a message put back at the tail of its queue.

PostgreSQL: the migrations run as the database's owner (HC_MIGRATION_DATABASE_URL); the workers as a user that may
read and write the rows of the owner's tables, nothing else (`database_grants`).
"""

from __future__ import annotations

from dataclasses import dataclass

NOTHING = "^$"
# A kind's queue: hypercard.<kind in lower case>, and none of the exchange or holding queue names.
KIND_QUEUE = r"hypercard\.(?!(?:events|invalid|unrouted|unverified)$)[a-z0-9_]+"
RETRY_QUEUE = r"hypercard\.[a-z0-9_]+\.retry\.[0-9]+"
DEAD_QUEUE = r"hypercard\.[a-z0-9_]+\.dead"
HOLDING_QUEUES = r"hypercard\.(?:invalid|unrouted|unverified)"
EVENTS = r"hypercard\.events"
DEFAULT_EXCHANGE = r"amq\.default"
TO_QUEUE = r"hypercard\.to-queue"


@dataclass(frozen=True)
class Role:
    name: str
    configure: str
    write: str
    read: str
    tags: tuple[str, ...] = ()


GATEWAY = Role(
    "gateway",
    configure=NOTHING,
    write=f"^{EVENTS}$",  # publish; nothing else: it cannot read, purge, delete or declare anything
    read=NOTHING,
)


def worker_role(name: str, kinds: list[str]) -> Role:
    """The user of one group of workers (`worker-cards`): its kinds' queues and retry queues, no other's."""
    own = "|".join(kind.lower() for kind in kinds)
    return Role(
        name,
        configure=rf"^hypercard\.(?:{own})\.retry\.[0-9]+$",  # declared as the schedule asks
        write=f"^{DEFAULT_EXCHANGE}$",  # retries and dead letters go to their queue by name
        # consume; read on a retry queue: RabbitMQ's rule for a queue that dead-letters (back to the kind's queue)
        read=rf"^hypercard\.(?:{own})(?:\.retry\.[0-9]+)?$",
    )


OPERATOR = Role(
    "operator",
    configure=NOTHING,
    write=f"^{TO_QUEUE}$",  # replay into a kind's queue, keep the rest in its queue: by queue name, nothing else
    read=f"^(?:{DEAD_QUEUE}|{HOLDING_QUEUES})$",  # hypercard-replay takes from the dead and holding queues only
    tags=("management",),  # hypercard-status reads the management API: its vhost's queues, no other user's
)
ROLES = {role.name: role for role in (GATEWAY, OPERATOR)}  # and a worker_role per group of kinds


def database_grants(*, owner: str, worker: str, database: str, schema: str = "public") -> list[str]:
    """What the worker user is granted: connect, find the schema, and read and write the rows of the tables `owner`
    creates there (now and by later migrations), never create, alter, drop or truncate."""
    rows = "SELECT, INSERT, UPDATE, DELETE"
    return [
        f"GRANT CONNECT ON DATABASE {database} TO {worker}",
        f"GRANT USAGE ON SCHEMA {schema} TO {worker}",
        f"GRANT {rows} ON ALL TABLES IN SCHEMA {schema} TO {worker}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {worker}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT {rows} ON TABLES TO {worker}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT USAGE, SELECT ON SEQUENCES TO {worker}",
    ]
