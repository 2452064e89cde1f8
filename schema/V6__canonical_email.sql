-- One account per mailbox: registrations are unique by the canonical form
-- of the address (lower case, without `+tag`, without dots at providers
-- that ignore them), while `email` keeps the address as given.
ALTER TABLE users ADD COLUMN email_canonical text;

-- Existing accounts: the oldest of each mailbox gets its canonical form
-- (computed with the default providers, gmail.com and googlemail.com);
-- any later account of the same mailbox keeps a form of its own, so the
-- index below can be built and new spellings still find the oldest.
WITH parts AS (
    SELECT id, created_at,
           split_part(email, '@', 1) AS local,
           split_part(email, '@', 2) AS domain
    FROM users
), based AS (
    SELECT id, created_at, domain,
           CASE WHEN split_part(local, '+', 1) = '' THEN local
                ELSE split_part(local, '+', 1) END AS base
    FROM parts
), canon AS (
    SELECT id,
           CASE WHEN domain IN ('gmail.com', 'googlemail.com') THEN replace(base, '.', '')
                ELSE base END || '@' || domain AS canonical,
           row_number() OVER (
               PARTITION BY CASE WHEN domain IN ('gmail.com', 'googlemail.com')
                                 THEN replace(base, '.', '') ELSE base END || '@' || domain
               ORDER BY created_at, id) AS n
    FROM based
)
UPDATE users u
SET email_canonical = CASE WHEN c.n = 1 THEN c.canonical ELSE 'legacy:' || u.id::text END
FROM canon c
WHERE u.id = c.id;

ALTER TABLE users ALTER COLUMN email_canonical SET NOT NULL;
CREATE UNIQUE INDEX users_email_canonical ON users (email_canonical);
