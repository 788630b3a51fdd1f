-- Inbox retention (workers/retention.py) deletes the keys older than HC_INBOX_RETENTION_DAYS, oldest first, in
-- bounded batches: this index finds them without reading the table. On an inbox that already holds many rows,
-- build it beforehand without blocking the workers' inserts, and this migration then finds it:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS hypercard_inbox_handled_at ON hypercard_inbox (handled_at);
CREATE INDEX IF NOT EXISTS hypercard_inbox_handled_at ON hypercard_inbox (handled_at);
