-- Wake-ups are sent by the application after the commits that call for them, by a statement
-- of their own (see `Wakeups` in runs/src/postgres.rs), no longer by triggers inside the
-- writing transactions: a transaction that notifies holds the notify-queue lock through its
-- WAL flush, which serialized every such commit in the cluster.
DROP TRIGGER attempts_due ON attempts;
DROP TRIGGER outbox_events ON outbox;
DROP FUNCTION runway_notify();
