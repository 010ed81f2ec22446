-- Launcher API keys: bearer secrets scoped to one org, stored as their SHA-256 only.
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    org_id text NOT NULL,
    name text NOT NULL,
    prefix text NOT NULL,
    secret_sha256 text NOT NULL UNIQUE,
    created_at integer NOT NULL,
    revoked_at integer
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at);
