-- Priority within a user: a job may ask to go before (or after) its
-- owner's other waiting jobs. It orders only that user's own line; shares
-- between users and tiers do not read it. Jobs stored before are normal.
ALTER TABLE jobs ADD COLUMN priority text NOT NULL DEFAULT 'normal'
    CHECK (priority IN ('low', 'normal', 'high'));
