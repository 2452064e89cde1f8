-- Scale-out: one active scheduler per cluster, elected with a PostgreSQL
-- advisory lock. Each election increments the epoch; every assignment
-- carries the epoch of the scheduler that made it and is refused here when
-- that scheduler has been deposed.

CREATE TABLE cluster_leader (
    id    int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    node  text,
    url   text,
    since timestamptz
);
INSERT INTO cluster_leader (id) VALUES (1);

-- Which scheduler term made each assignment, to prove that a deposed
-- scheduler assigned nothing after its successor was elected.
ALTER TABLE job_attempts ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
