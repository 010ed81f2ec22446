-- Run store schema for SQLite.
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC): they sort numerically,
-- which keeps keyset pagination and due-time comparisons exact. Ids are hyphenated UUID text.

CREATE TABLE runs (
    id              TEXT    PRIMARY KEY NOT NULL,
    created_at      INTEGER NOT NULL,
    validator_id    TEXT    NOT NULL,
    validator_type  TEXT    NOT NULL,
    org_id          TEXT    NOT NULL,
    workflow_id     TEXT    NOT NULL,
    spec            TEXT    NOT NULL,
    max_attempts    INTEGER NOT NULL CHECK (max_attempts >= 1),
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed')),
    result          TEXT    CHECK (result IN ('passed', 'failed', 'error', 'canceled', 'timed_out')),
    finished_at     INTEGER,
    messages        TEXT,
    metrics         TEXT,
    output_uri      TEXT,
    output_sha256   TEXT,
    idempotency_key TEXT,
    request_sha256  TEXT,
    -- A result exists exactly when the run is completed.
    CHECK ((state = 'completed') = (result IS NOT NULL)),
    CHECK ((idempotency_key IS NULL) = (request_sha256 IS NULL))
);

-- The idempotency guarantee rests on this index, not on a read before the insert.
CREATE UNIQUE INDEX runs_idempotency ON runs (org_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_listing ON runs (created_at DESC, id DESC);
CREATE INDEX runs_org_listing ON runs (org_id, created_at DESC, id DESC);

CREATE TABLE attempts (
    id                    TEXT    PRIMARY KEY NOT NULL,
    run_id                TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number                INTEGER NOT NULL CHECK (number >= 1),
    state                 TEXT    NOT NULL CHECK (state IN ('pending', 'dispatching', 'running',
                              'unknown', 'completed', 'failed', 'canceled', 'timed_out')),
    validator_id          TEXT    NOT NULL,
    not_before            INTEGER NOT NULL,
    storage_prefix        TEXT    NOT NULL,
    callback_id           TEXT    NOT NULL UNIQUE,
    callback_nonce_sha256 TEXT    NOT NULL,
    deadline_at           INTEGER,
    backend_ref           TEXT,
    cancel_requested      INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    error                 TEXT,
    created_at            INTEGER NOT NULL,
    dispatched_at         INTEGER,
    started_at            INTEGER,
    finished_at           INTEGER,
    UNIQUE (run_id, number)
);

CREATE INDEX attempts_due ON attempts (not_before, created_at, id) WHERE state = 'pending';
CREATE INDEX attempts_by_state ON attempts (state, validator_id);

CREATE TABLE callback_receipts (
    id          TEXT    PRIMARY KEY NOT NULL,
    attempt_id  TEXT    REFERENCES attempts (id) ON DELETE CASCADE,
    callback_id TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('finalized', 'duplicate', 'late', 'rejected')),
    detail      TEXT
);

CREATE INDEX callback_receipts_by_attempt ON callback_receipts (attempt_id, received_at);

CREATE TABLE outbox (
    id              TEXT    PRIMARY KEY NOT NULL,
    run_id          TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    event           TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    dead_at         INTEGER,
    last_error      TEXT
);

CREATE INDEX outbox_due ON outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_by_run ON outbox (run_id, created_at);
