-- Retention of finished jobs.
--
-- A finished job is kept in full for a while (by the state it ended in),
-- then pruned: its prompt, its parameters beyond the shape it was priced
-- by, its result, error and webhook address, its attempt records and its
-- job events go; the row stays with what the money needs (id, owner,
-- cost, charge, times), and its hold and ledger entries are never
-- touched, so every audit still balances.
ALTER TABLE jobs ADD COLUMN pruned_at timestamptz;
ALTER TABLE jobs ADD CONSTRAINT only_finished_jobs_are_pruned
    CHECK (pruned_at IS NULL OR state IN ('succeeded', 'failed', 'cancelled'));

-- What the sweep reads: finished jobs still kept in full, oldest-finished
-- first per state.
CREATE INDEX jobs_to_prune ON jobs (state, finished_at)
    WHERE pruned_at IS NULL AND state IN ('succeeded', 'failed', 'cancelled');
-- Pruning deletes a job's events; without this it would scan them all.
CREATE INDEX job_events_by_job ON job_events (job_id);
