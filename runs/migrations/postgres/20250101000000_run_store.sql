-- Run store schema for PostgreSQL.

CREATE TABLE runs (
    id              uuid        PRIMARY KEY,
    created_at      timestamptz NOT NULL,
    validator_id    text        NOT NULL,
    validator_type  text        NOT NULL,
    org_id          text        NOT NULL,
    workflow_id     text        NOT NULL,
    spec            jsonb       NOT NULL,
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
    state           text        NOT NULL CHECK (state IN ('queued', 'running', 'completed')),
    result          text        CHECK (result IN ('passed', 'failed', 'error', 'canceled', 'timed_out')),
    finished_at     timestamptz,
    messages        jsonb,
    metrics         jsonb,
    output_uri      text,
    output_sha256   text,
    idempotency_key text,
    request_sha256  text,
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
    id                    uuid        PRIMARY KEY,
    run_id                uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number                integer     NOT NULL CHECK (number >= 1),
    state                 text        NOT NULL CHECK (state IN ('pending', 'dispatching', 'running',
                              'unknown', 'completed', 'failed', 'canceled', 'timed_out')),
    validator_id          text        NOT NULL,
    not_before            timestamptz NOT NULL,
    storage_prefix        text        NOT NULL,
    callback_id           text        NOT NULL UNIQUE,
    callback_nonce_sha256 text        NOT NULL,
    deadline_at           timestamptz,
    backend_ref           text,
    cancel_requested      boolean     NOT NULL DEFAULT false,
    error                 text,
    created_at            timestamptz NOT NULL,
    dispatched_at         timestamptz,
    started_at            timestamptz,
    finished_at           timestamptz,
    UNIQUE (run_id, number)
);

CREATE INDEX attempts_due ON attempts (not_before, created_at, id) WHERE state = 'pending';
CREATE INDEX attempts_by_state ON attempts (state, validator_id);

CREATE TABLE callback_receipts (
    id          uuid        PRIMARY KEY,
    attempt_id  uuid        REFERENCES attempts (id) ON DELETE CASCADE,
    callback_id text        NOT NULL,
    received_at timestamptz NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('finalized', 'duplicate', 'late', 'rejected')),
    detail      text
);

CREATE INDEX callback_receipts_by_attempt ON callback_receipts (attempt_id, received_at);

CREATE TABLE outbox (
    id              uuid        PRIMARY KEY,
    run_id          uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    event           text        NOT NULL,
    payload         jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    dead_at         timestamptz,
    last_error      text
);

CREATE INDEX outbox_due ON outbox (next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_by_run ON outbox (run_id, created_at);
