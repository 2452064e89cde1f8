-- The same three steps for 100 jobs per transaction on one connection:
-- what group commit buys.
\set w random(1, 1000)
BEGIN;
UPDATE pb_wallets SET held = held + 100 WHERE id = :w;
WITH j AS (INSERT INTO pb_jobs (wallet, state, cost) SELECT :w, 'queued', 1 FROM generate_series(1, 100) RETURNING id)
INSERT INTO pb_ledger (wallet, kind, amount, job) SELECT :w, 'hold', 1, id FROM j;
UPDATE pb_jobs SET state = 'running' WHERE wallet = :w AND state = 'queued';
UPDATE pb_jobs SET state = 'succeeded' WHERE wallet = :w AND state = 'running';
UPDATE pb_wallets SET balance = balance - 100, held = held - 100 WHERE id = :w;
INSERT INTO pb_ledger (wallet, kind, amount, job) SELECT :w, 'post', 1, id FROM pb_jobs WHERE wallet = :w ORDER BY id DESC LIMIT 100;
COMMIT;
