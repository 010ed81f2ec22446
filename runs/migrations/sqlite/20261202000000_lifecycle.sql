-- The lifecycle redesign: typed backend references, exit codes and log tails of jobs that ended
-- without a result, retries made by the store (whose nonce commitment the dispatcher records
-- later, so the column becomes nullable), salvaged receipts, per-run retry policy, and the
-- validator-specific outputs of a run.
--
-- SQLite cannot drop a NOT NULL or change a CHECK in place, so `attempts` and
-- `callback_receipts` are rebuilt. Migrations run in a transaction with foreign keys on, so
-- the order matters: the new receipts table refers to the new attempts table, the old receipts
-- table is dropped before the old attempts table (whose implicit DELETE then cascades to
-- nothing), and the renames rewrite the references (SQLite >= 3.26).

CREATE TABLE attempts_new (
    id                    TEXT    PRIMARY KEY NOT NULL,
    run_id                TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number                INTEGER NOT NULL CHECK (number >= 1),
    state                 TEXT    NOT NULL CHECK (state IN ('pending', 'dispatching', 'running',
                              'unknown', 'completed', 'failed', 'canceled', 'timed_out')),
    validator_id          TEXT    NOT NULL,
    not_before            INTEGER NOT NULL,
    storage_prefix        TEXT    NOT NULL,
    callback_id           TEXT    NOT NULL UNIQUE,
    callback_nonce_sha256 TEXT,
    deadline_at           INTEGER,
    backend_kind          TEXT    CHECK (backend_kind IN ('mock', 'process', 'docker', 'cloud_run')),
    backend_ref           TEXT,
    cancel_requested      INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    error                 TEXT,
    exit_code             INTEGER,
    log_tail              TEXT,
    created_at            INTEGER NOT NULL,
    dispatched_at         INTEGER,
    started_at            INTEGER,
    finished_at           INTEGER,
    UNIQUE (run_id, number),
    CHECK ((backend_kind IS NULL) = (backend_ref IS NULL))
);
INSERT INTO attempts_new (id, run_id, number, state, validator_id, not_before, storage_prefix,
    callback_id, callback_nonce_sha256, deadline_at, backend_kind, backend_ref, cancel_requested,
    error, created_at, dispatched_at, started_at, finished_at)
SELECT id, run_id, number, state, validator_id, not_before, storage_prefix, callback_id,
    callback_nonce_sha256, deadline_at, CASE WHEN backend_ref IS NULL THEN NULL ELSE 'mock' END,
    backend_ref, cancel_requested, error, created_at, dispatched_at, started_at, finished_at
FROM attempts;
CREATE TABLE callback_receipts_new (
    id          TEXT    PRIMARY KEY NOT NULL,
    attempt_id  TEXT    REFERENCES attempts_new (id) ON DELETE CASCADE,
    callback_id TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('finalized', 'duplicate', 'late', 'rejected',
                    'salvaged')),
    detail      TEXT
);
INSERT INTO callback_receipts_new (id, attempt_id, callback_id, received_at, outcome, detail)
SELECT id, attempt_id, callback_id, received_at, outcome, detail FROM callback_receipts;
DROP TABLE callback_receipts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
ALTER TABLE callback_receipts_new RENAME TO callback_receipts;
CREATE INDEX attempts_due ON attempts (not_before, created_at, id) WHERE state = 'pending';
CREATE INDEX attempts_by_state ON attempts (state, validator_id);
CREATE INDEX attempts_active ON attempts (id) WHERE state IN ('dispatching', 'running', 'unknown');
CREATE INDEX callback_receipts_by_attempt ON callback_receipts (attempt_id, received_at);

ALTER TABLE runs ADD COLUMN retry_initial_ms INTEGER NOT NULL DEFAULT 5000
    CHECK (retry_initial_ms >= 0);
ALTER TABLE runs ADD COLUMN retry_max_ms INTEGER NOT NULL DEFAULT 300000
    CHECK (retry_max_ms >= 0);
ALTER TABLE runs ADD COLUMN outputs TEXT;

