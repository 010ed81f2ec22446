-- The event streams read the outbox in the order events became visible. `tx` is the writing
-- transaction's id: a reader returns only events whose transaction is older than every
-- transaction still running (the snapshot's xmin), in (tx, id) order, so no event can later
-- appear before one already returned and a stream resumed from its last (tx, id) misses none.
ALTER TABLE outbox ADD COLUMN tx xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outbox_stream ON outbox (tx, id);
