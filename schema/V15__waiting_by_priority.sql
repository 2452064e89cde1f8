-- A user's waiting jobs counted by priority, beside the total the
-- waiting-job limit reads: a submission's queue position is the number of
-- the user's waiting jobs at its priority or above, known under the wallet
-- lock it already holds, instead of a count of the user's waiting rows on
-- every submission (which grows with the backlog, the very moment the
-- database has least time to spare). Normal is the rest of the total.
ALTER TABLE wallets
    ADD COLUMN waiting_low int NOT NULL DEFAULT 0 CHECK (waiting_low >= 0),
    ADD COLUMN waiting_high int NOT NULL DEFAULT 0 CHECK (waiting_high >= 0),
    ADD CONSTRAINT waiting_by_priority_within_total CHECK (waiting_low + waiting_high <= waiting);

UPDATE wallets w SET
    waiting_low = (SELECT count(*) FROM jobs j WHERE j.user_id = w.user_id AND j.state = 'queued' AND j.priority = 'low'),
    waiting_high = (SELECT count(*) FROM jobs j WHERE j.user_id = w.user_id AND j.state = 'queued' AND j.priority = 'high');
