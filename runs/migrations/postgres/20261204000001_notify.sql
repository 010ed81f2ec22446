-- Wake-ups across replicas: a statement that adds attempts (a new run, a retry) notifies
-- `runway_due`; one that adds events notifies `runway_events`. PostgreSQL delivers them at
-- commit, once per transaction and channel. Listeners still poll: a notification sent while
-- one reconnects is lost.
CREATE FUNCTION runway_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER attempts_due AFTER INSERT ON attempts
    FOR EACH STATEMENT EXECUTE FUNCTION runway_notify('runway_due');
CREATE TRIGGER outbox_events AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION runway_notify('runway_events');
