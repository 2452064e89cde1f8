-- Jobs by state, kept by the writers instead of counted.
--
-- Counting `jobs` by state is a scan of every job ever submitted (finished
-- ones stay, thin, for the money), which an operator's dashboard or a
-- load test polling the stats would run several times a second. Every
-- write that moves a job between states also adds its net change here,
-- in the same transaction, so the count is exact at every commit.
--
-- Each connection adds to its own shard (its backend pid modulo 16):
-- transactions on one connection run one after another, so concurrent
-- writers, here or on other nodes, do not queue behind one hot row. A
-- reader sums the shards. A transaction adds to its rows in one statement
-- in state order, after every job and wallet lock it takes, so two
-- transactions sharing a shard wait for each other but never deadlock.
CREATE TABLE job_state_counts (
    state text NOT NULL,
    shard int NOT NULL,
    jobs bigint NOT NULL,
    PRIMARY KEY (state, shard)
) WITH (fillfactor = 50);

INSERT INTO job_state_counts (state, shard, jobs)
    SELECT state, 0, count(*) FROM jobs GROUP BY state;
