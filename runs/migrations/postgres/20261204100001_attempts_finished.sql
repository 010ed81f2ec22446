-- The dashboard's validator page counts and times the attempts that ended in a recent window.
CREATE INDEX attempts_finished ON attempts (finished_at) WHERE finished_at IS NOT NULL;
