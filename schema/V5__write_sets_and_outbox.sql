-- Group commit and the outbox.
--
-- A wallet row now also carries how many of the user's jobs wait, so the
-- waiting-job limit is checked under the wallet lock in O(1) instead of
-- counting the user's queue; every change of a job into or out of
-- 'queued' updates it in the same transaction.
ALTER TABLE wallets ADD COLUMN waiting int NOT NULL DEFAULT 0 CHECK (waiting >= 0);
UPDATE wallets w SET waiting = q.n
  FROM (SELECT user_id, count(*) AS n FROM jobs WHERE state = 'queued' GROUP BY user_id) q
 WHERE q.user_id = w.user_id;

-- Job events, written with the change that causes them: what watchers of
-- a job or of an account are shown, in commit order per job.
CREATE TABLE job_events (
    id         bigserial PRIMARY KEY,
    job_id     uuid NOT NULL REFERENCES jobs (id),
    user_id    uuid NOT NULL REFERENCES users (id),
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX job_events_by_user ON job_events (user_id, id);

-- Webhook deliveries owed, written with the change that causes them and
-- removed once delivered (or given up). `next_attempt_at` is also the
-- claim: whoever took a row owns it until then.
CREATE TABLE webhook_outbox (
    id              text PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (id),
    user_id         uuid NOT NULL REFERENCES users (id),
    url             text NOT NULL,
    event_type      text NOT NULL,
    job             jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    last_error      text
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);
