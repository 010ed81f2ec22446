-- Indexes for the launcher's gauges (`RunStore::counts`, scraped at `/metrics`): unfinished
-- runs by validator and state, and completed runs within a recent window by validator and
-- result, each a grouped count over a small range of one partial index.
CREATE INDEX runs_unfinished ON runs (validator_id, state) WHERE state <> 'completed';
CREATE INDEX runs_completed_recent ON runs (finished_at, validator_id, result)
    WHERE state = 'completed';
