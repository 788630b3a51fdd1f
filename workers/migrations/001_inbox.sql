-- The inbox: one row per handled notification key, committed with the handler's effect.
CREATE TABLE hypercard_inbox (
    kind text NOT NULL,
    idempotency_key text NOT NULL,  -- sha256 of the natural key
    event_id text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, idempotency_key)
);
