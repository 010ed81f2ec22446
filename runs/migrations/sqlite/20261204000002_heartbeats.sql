-- A job's heartbeats: when it last said it is alive, and what it last said it is doing
-- ({"fraction": 0..1, "message": "…"}). Written by the callback service, read by the reconciler
-- (a fresh heartbeat means alive) and shown in the run.
ALTER TABLE attempts ADD COLUMN heartbeat_at integer;
ALTER TABLE attempts ADD COLUMN progress text;
