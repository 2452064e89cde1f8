-- Platform rules (ToS 2.2, 3.2, 4.2, 4.5, 5): versioned prices, payments,
-- membership gifts and content violations. As in V1, the database guards
-- the money by itself: a payment id is applied once (primary key), and a
-- gift is granted once (a conditional update of its row, in the same
-- transaction as its ledger entry).

-- Prices change with notice (ToS 4.5). The version in effect at t is the
-- highest version whose effective_at <= t; version 1 is the configured
-- table at first start-up.
CREATE TABLE price_versions (
    version      int PRIMARY KEY CHECK (version >= 1),
    effective_at timestamptz NOT NULL,
    prices       jsonb NOT NULL,
    created_at   timestamptz NOT NULL
);

-- The version that priced each job, recorded on the job and on its hold.
ALTER TABLE jobs ADD COLUMN price_version int NOT NULL DEFAULT 1 CHECK (price_version >= 1);
ALTER TABLE holds ADD COLUMN price_version int NOT NULL DEFAULT 1 CHECK (price_version >= 1);

-- Every payment the provider reported, claimed in the same transaction as
-- what it bought. Payments are final (ToS 5.2): rows are never removed.
CREATE TABLE payments (
    payment_id   text PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id),
    product      jsonb NOT NULL,
    request_hash bytea NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX payments_by_user ON payments (user_id);

-- One row per paid month of a membership (ToS 5.3): granted once, when
-- its month starts.
CREATE TABLE membership_gifts (
    payment_id text NOT NULL REFERENCES payments (payment_id),
    month      int NOT NULL CHECK (month >= 0 AND month < 12),
    user_id    uuid NOT NULL REFERENCES users (id),
    tier       text NOT NULL CHECK (tier IN ('basic', 'professional', 'enterprise')),
    amount     bigint NOT NULL CHECK (amount > 0),
    starts_at  timestamptz NOT NULL,
    granted_at timestamptz,
    PRIMARY KEY (payment_id, month)
);
CREATE INDEX membership_gifts_due ON membership_gifts (starts_at) WHERE granted_at IS NULL;
CREATE INDEX membership_gifts_by_user ON membership_gifts (user_id, starts_at);

-- Prompts refused by the content rules (ToS 3.2), counted per user.
CREATE TABLE content_violations (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    category   text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX content_violations_by_user ON content_violations (user_id, created_at);
