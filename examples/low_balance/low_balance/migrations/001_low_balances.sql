-- The kind's own table, created by the worker at start (after the project's migrations).
CREATE TABLE IF NOT EXISTS low_balances (
    account_no text PRIMARY KEY,
    balance bigint NOT NULL,
    reported_at timestamptz NOT NULL
);
