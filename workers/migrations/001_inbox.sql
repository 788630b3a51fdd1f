-- The inbox: one row per handled notification key, committed with the handler's effect.
CREATE TABLE hypercard_inbox (
    kind text NOT NULL,
    idempotency_key text NOT NULL,  -- keyed digest of the natural key (HC_ID_SECRET; sha256 before that)
    event_id text NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, idempotency_key)
);
