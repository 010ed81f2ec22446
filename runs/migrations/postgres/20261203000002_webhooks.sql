-- Webhook subscriptions: where an org's events are POSTed, signed (Standard Webhooks) with each of
-- `secrets` (space-separated `whsec_…`, newest first: two during a rotation); `events` is the
-- space-separated event types.
CREATE TABLE webhook_subscriptions (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    url text NOT NULL,
    secrets text NOT NULL,
    events text NOT NULL,
    created_at timestamptz NOT NULL,
    disabled_at timestamptz,
    disabled_reason text
);
CREATE INDEX webhook_subscriptions_org ON webhook_subscriptions (org_id, created_at);
