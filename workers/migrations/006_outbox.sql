-- The outbox: effects outside the database that handlers hand to the worker (`ctx.after_commit`), written in the
-- handler's transaction and performed by the worker's relay (workers/outbox.py) once it committed; deleted once done.
CREATE TABLE hypercard_outbox (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,  -- performed by a worker of this kind
    effect text NOT NULL,  -- the registered effect: module.qualname
    idempotency_key text NOT NULL,  -- the notification's inbox key (or event id) and the effect's rank
    event_id text NOT NULL,
    payload bytea NOT NULL,  -- JSON, sealed (AES-GCM under HC_ID_SECRET) when written by a worker; never logged
    sealed boolean NOT NULL DEFAULT true,
    attempts integer NOT NULL DEFAULT 0,
    due_at timestamptz NOT NULL DEFAULT now(),
    last_error text,  -- the type of the last failure only: its text may quote the payload
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, idempotency_key)
);
CREATE INDEX hypercard_outbox_due ON hypercard_outbox (kind, due_at);
