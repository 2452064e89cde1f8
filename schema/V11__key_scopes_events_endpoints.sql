-- API keys with a name, an expiry and scopes; the per-user event stream;
-- account webhook endpoints with a delivery log.
--
-- A key without scopes (NULL: every key made before this migration, the
-- key of a registration, and keys issued without naming scopes) keeps full
-- access to its account.
ALTER TABLE api_keys ADD COLUMN name text;
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN scopes text[];
ALTER TABLE api_keys ADD CONSTRAINT scoped_keys_name_a_scope
    CHECK (scopes IS NULL OR cardinality(scopes) > 0);

-- The per-user stream replays a window of `job_events` by (user_id, id),
-- which `job_events_by_user` already serves; it also asks whether an event
-- after the requested one fell out of the window, by time.
CREATE INDEX job_events_by_user_time ON job_events (user_id, created_at);

-- Where a user's job events are also delivered, beside a job's own URL.
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    url         text NOT NULL,
    event_types text[] NOT NULL CHECK (cardinality(event_types) > 0),
    enabled     boolean NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints (user_id, created_at);

-- A delivery owed to an endpoint names it; deleting the endpoint drops
-- what it is still owed.
ALTER TABLE webhook_outbox ADD COLUMN endpoint_id uuid
    REFERENCES webhook_endpoints (id) ON DELETE CASCADE;
CREATE INDEX webhook_outbox_by_endpoint ON webhook_outbox (endpoint_id)
    WHERE endpoint_id IS NOT NULL;

-- Each attempt to an endpoint, kept for its owner to read (the newest
-- hundred per endpoint).
CREATE TABLE webhook_deliveries (
    id           bigserial PRIMARY KEY,
    endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    webhook_id   text NOT NULL,
    job_id       uuid NOT NULL,
    event_type   text NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  int,
    error        text,
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'given_up'))
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
