-- The lifecycle redesign: typed backend references, exit codes and log tails of jobs that ended
-- without a result, retries made by the store (whose nonce commitment the dispatcher records
-- later, so the column becomes nullable), salvaged receipts, per-run retry policy, and the
-- validator-specific outputs of a run.

ALTER TABLE attempts ALTER COLUMN callback_nonce_sha256 DROP NOT NULL;
ALTER TABLE attempts
    ADD COLUMN backend_kind text CHECK (backend_kind IN ('mock', 'process', 'docker', 'cloud_run')),
    ADD COLUMN exit_code integer,
    ADD COLUMN log_tail text;
UPDATE attempts SET backend_kind = 'mock' WHERE backend_ref IS NOT NULL;
ALTER TABLE attempts
    ADD CONSTRAINT attempts_backend_pair CHECK ((backend_kind IS NULL) = (backend_ref IS NULL));
CREATE INDEX attempts_active ON attempts (id) WHERE state IN ('dispatching', 'running', 'unknown');

ALTER TABLE callback_receipts DROP CONSTRAINT callback_receipts_outcome_check;
ALTER TABLE callback_receipts ADD CONSTRAINT callback_receipts_outcome_check
    CHECK (outcome IN ('finalized', 'duplicate', 'late', 'rejected', 'salvaged'));

-- A run's spec is opaque to the store and read back as the text it was written as: `json`
-- keeps it verbatim (still validated), where `jsonb` would re-format it.
ALTER TABLE runs ALTER COLUMN spec TYPE json USING spec::json;

ALTER TABLE runs
    ADD COLUMN retry_initial_ms bigint NOT NULL DEFAULT 5000 CHECK (retry_initial_ms >= 0),
    ADD COLUMN retry_max_ms bigint NOT NULL DEFAULT 300000 CHECK (retry_max_ms >= 0),
    ADD COLUMN outputs jsonb;
