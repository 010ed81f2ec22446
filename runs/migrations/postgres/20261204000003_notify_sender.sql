-- Wake-ups name their sender: the payload is the writing connection's `application_name`,
-- which each Runway process makes its own, so that a launcher is not woken by what it wrote
-- itself (it has woken its dispatcher already).
CREATE OR REPLACE FUNCTION runway_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], coalesce(current_setting('application_name', true), ''));
    RETURN NULL;
END;
$$;
