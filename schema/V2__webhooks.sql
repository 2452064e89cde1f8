-- Job webhooks (Standard Webhooks): where a job's start and end are POSTed,
-- and each user's signing secret.

ALTER TABLE jobs ADD COLUMN webhook_url text;

CREATE TABLE webhook_secrets (
    user_id    uuid PRIMARY KEY REFERENCES users (id),
    secret     text NOT NULL,
    created_at timestamptz NOT NULL
);
