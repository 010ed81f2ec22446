-- The event streams read the outbox in the order events became visible. SQLite has one writer
-- at a time, so a sequence taken inside the writing transaction is commit order; a stream
-- resumed from its last `seq` misses none.
ALTER TABLE outbox ADD COLUMN seq integer;
UPDATE outbox SET seq = rowid;
CREATE UNIQUE INDEX outbox_seq ON outbox (seq);
