-- AdMedia orchestrator: the durable store.
--
-- The database guards the money by itself, whatever the application does:
-- a wallet can never show more held than its balance, ledger rows are
-- insert-only, each job has one hold and that hold is resolved (posted or
-- voided) at most once.

CREATE TABLE users (
    id                    uuid PRIMARY KEY,
    email                 text NOT NULL,
    display_name          text NOT NULL,
    tier                  text NOT NULL DEFAULT 'free'
                          CHECK (tier IN ('free', 'basic', 'professional', 'enterprise')),
    membership_expires_at timestamptz,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'suspended', 'terminated')),
    created_at            timestamptz NOT NULL
);
-- One account per e-mail address (ToS 2.4); the application stores it
-- trimmed and lower-cased.
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    key_hash   bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX api_keys_by_user ON api_keys (user_id);

CREATE TABLE wallets (
    user_id uuid PRIMARY KEY REFERENCES users (id),
    balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    held    bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    CONSTRAINT available_never_negative CHECK (held <= balance)
);

CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    -- Submission order; a retried job keeps its place in line by it.
    seq          bigserial NOT NULL UNIQUE,
    user_id      uuid NOT NULL REFERENCES users (id),
    kind         text NOT NULL CHECK (kind IN ('image', 'video')),
    model        text NOT NULL,
    prompt       text NOT NULL,
    params       jsonb NOT NULL,
    tier         text NOT NULL CHECK (tier IN ('free', 'basic', 'professional', 'enterprise')),
    cost         bigint NOT NULL CHECK (cost > 0),
    state        text NOT NULL
                 CHECK (state IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts     int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL CHECK (max_attempts >= 1),
    charge       text NOT NULL DEFAULT 'held' CHECK (charge IN ('held', 'posted', 'voided')),
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    retry_at     timestamptz,
    error        jsonb,
    result       jsonb,
    worker_id    uuid,
    lease        uuid,
    CHECK (attempts >= 0 AND attempts <= max_attempts),
    -- Exactly the jobs in flight carry a lease.
    CHECK ((state IN ('assigned', 'running')) = (lease IS NOT NULL)),
    -- Exactly the finished jobs have a resolved hold.
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (charge <> 'held'))
);
CREATE INDEX jobs_by_user ON jobs (user_id, seq DESC);
CREATE INDEX jobs_waiting_by_user ON jobs (user_id, seq) WHERE state = 'queued';
CREATE INDEX jobs_active ON jobs (state, seq) WHERE state IN ('queued', 'assigned', 'running');

-- One hold per job, keyed by the job. Resolution is a conditional update
-- from 'held', so it happens once.
CREATE TABLE holds (
    job_id      uuid PRIMARY KEY REFERENCES jobs (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    state       text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'posted', 'voided')),
    created_at  timestamptz NOT NULL,
    resolved_at timestamptz,
    CHECK ((state = 'held') = (resolved_at IS NULL))
);

CREATE TABLE ledger_entries (
    id              bigserial PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    kind            text NOT NULL CHECK (kind IN ('grant', 'hold', 'post', 'void')),
    -- Always positive: the kind says the direction.
    amount          bigint NOT NULL CHECK (amount > 0),
    -- The wallet right after this entry.
    balance         bigint NOT NULL CHECK (balance >= 0),
    held            bigint NOT NULL CHECK (held >= 0 AND held <= balance),
    source          text CHECK (source IN ('registration', 'purchase', 'membership_gift', 'admin')),
    job_id          uuid REFERENCES jobs (id),
    note            text,
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    CHECK ((kind = 'grant') = (source IS NOT NULL)),
    CHECK ((kind = 'grant') = (job_id IS NULL))
);
CREATE INDEX ledger_by_user ON ledger_entries (user_id, id DESC);
CREATE UNIQUE INDEX ledger_one_hold_per_job ON ledger_entries (job_id) WHERE kind = 'hold';
CREATE UNIQUE INDEX ledger_one_resolution_per_hold ON ledger_entries (job_id) WHERE kind IN ('post', 'void');
CREATE UNIQUE INDEX ledger_grant_idempotency ON ledger_entries (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are never changed or deleted; correct with a new entry';
END
$$;
CREATE TRIGGER ledger_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Every attempt of every job: which worker, which lease, how it ended.
CREATE TABLE job_attempts (
    job_id      uuid NOT NULL REFERENCES jobs (id),
    attempt     int NOT NULL CHECK (attempt >= 1),
    worker_id   uuid NOT NULL,
    lease       uuid NOT NULL UNIQUE,
    assigned_at timestamptz NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    outcome     text,
    message     text,
    PRIMARY KEY (job_id, attempt)
);

-- Claimed in the same transaction as the job it protects.
CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL REFERENCES users (id),
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    job_id       uuid NOT NULL REFERENCES jobs (id),
    -- The job as first returned, so a replay returns the same response.
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
