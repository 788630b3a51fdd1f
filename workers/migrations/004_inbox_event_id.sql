-- `hypercard-find EVENT_ID` (workers/finding.py) looks an event up in the inbox by its event id: this index finds
-- its rows without reading the table. The migrations run in a transaction, where CREATE INDEX CONCURRENTLY is not
-- allowed; on an inbox that already holds many rows, build it beforehand without blocking the workers' inserts,
-- and this migration then finds it:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS hypercard_inbox_event_id ON hypercard_inbox (event_id);
CREATE INDEX IF NOT EXISTS hypercard_inbox_event_id ON hypercard_inbox (event_id);
