-- One job's life as three transactions: hold + insert, start, post.
\set w random(1, 1000)
BEGIN;
UPDATE pb_wallets SET held = held + 1 WHERE id = :w;
INSERT INTO pb_jobs (wallet, state, cost) VALUES (:w, 'queued', 1) RETURNING id \gset
INSERT INTO pb_ledger (wallet, kind, amount, job) VALUES (:w, 'hold', 1, :id);
COMMIT;
UPDATE pb_jobs SET state = 'running' WHERE id = :id AND state = 'queued';
BEGIN;
UPDATE pb_jobs SET state = 'succeeded' WHERE id = :id AND state = 'running';
UPDATE pb_wallets SET balance = balance - 1, held = held - 1 WHERE id = :w;
INSERT INTO pb_ledger (wallet, kind, amount, job) VALUES (:w, 'post', 1, :id);
COMMIT;
