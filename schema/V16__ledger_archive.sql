-- The ledger archive.
--
-- Retention leaves, for ever, what the money needs: a thin job row, its
-- hold and its two ledger entries per finished job, about 1.1 KB each. The
-- archive bounds that: the oldest whole part of a user's history (entries
-- older than the archive horizon whose jobs are pruned and resolved inside
-- it) is written to object storage as a chapter, and in one transaction
-- the chapter is recorded here and its entries, holds and thin job rows
-- leave. The wallet is not touched: it already carries the chapter's sum,
-- and `balance`/`held` below are the wallet right after the chapter's last
-- entry, from which the live entries replay.
CREATE TABLE ledger_chapters (
    user_id     uuid NOT NULL REFERENCES users (id),
    first_entry bigint NOT NULL,
    last_entry  bigint NOT NULL,
    entries     int NOT NULL CHECK (entries > 0),
    jobs        int NOT NULL CHECK (jobs >= 0),
    balance     bigint NOT NULL CHECK (balance >= 0),
    held        bigint NOT NULL CHECK (held >= 0 AND held <= balance),
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    closed_at   timestamptz NOT NULL,
    object_key  text NOT NULL,
    PRIMARY KEY (user_id, first_entry),
    CHECK (first_entry <= last_entry)
);
CREATE UNIQUE INDEX ledger_chapters_by_end ON ledger_chapters (user_id, last_entry DESC);

-- Still append-only: an entry is never changed, and it is deleted only
-- once a recorded chapter holds it.
CREATE OR REPLACE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM ledger_chapters c
        WHERE c.user_id = OLD.user_id AND c.first_entry <= OLD.id AND c.last_entry >= OLD.id
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'ledger entries are never changed or deleted; correct with a new entry';
END
$$;

-- Deleting an archived job checks every table that names it. Its ledger
-- entries were found only through two partial unique indexes (one hold,
-- one resolution per job), which that check cannot use: one index on the
-- job id keeps the same rule (at most one hold and one post or void per
-- job) and serves the check. Idempotency records are found by job for
-- the same check, and so the archive can leave a protected job alone.
DROP INDEX ledger_one_hold_per_job;
DROP INDEX ledger_one_resolution_per_hold;
CREATE UNIQUE INDEX ledger_one_hold_and_one_resolution_per_job
    ON ledger_entries (job_id, (kind = 'hold')) WHERE job_id IS NOT NULL;
CREATE INDEX idempotency_keys_by_job ON idempotency_keys (job_id);
