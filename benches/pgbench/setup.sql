-- The reference schema for benches/pgbench/lifecycle-*.sql: a wallet per
-- client, jobs and ledger entries, as small as the orchestrator's.
DROP TABLE IF EXISTS pb_ledger, pb_jobs, pb_wallets;
CREATE TABLE pb_wallets (id int PRIMARY KEY, balance bigint NOT NULL, held bigint NOT NULL, CHECK (held <= balance));
CREATE TABLE pb_jobs (id bigserial PRIMARY KEY, wallet int NOT NULL, state text NOT NULL, cost bigint NOT NULL);
CREATE TABLE pb_ledger (id bigserial PRIMARY KEY, wallet int NOT NULL, kind text NOT NULL, amount bigint NOT NULL, job bigint);
INSERT INTO pb_wallets SELECT g, 1000000000, 0 FROM generate_series(1, 1000) g;
