-- The catalogue of stored files: materials users upload (ToS 6.4) and the
-- outputs their jobs produced (ToS 6.2). The bytes live in the object
-- store under `key`; a row says whose they are, how big, until when, and
-- whether they are still served. No foreign keys to users or jobs: a row
-- must outlive nothing and block no deletion, and the sweep purges by key.
CREATE TABLE stored_objects (
    key          text PRIMARY KEY,
    user_id      uuid NOT NULL,
    -- Exactly one of the two roles.
    material_id  uuid UNIQUE,
    name         text,
    job_id       uuid,
    output_index integer,
    license      text,
    media        text NOT NULL CHECK (media IN ('png', 'jpeg', 'webp', 'mp4')),
    size         bigint NOT NULL CHECK (size >= 0),
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    gone_at      timestamptz,
    purged_at    timestamptz,
    CHECK ((material_id IS NOT NULL AND name IS NOT NULL AND job_id IS NULL AND output_index IS NULL)
        OR (material_id IS NULL AND job_id IS NOT NULL AND output_index >= 0 AND license IS NOT NULL)),
    UNIQUE (job_id, output_index)
);

CREATE INDEX stored_objects_user ON stored_objects (user_id, created_at DESC) WHERE gone_at IS NULL;
CREATE INDEX stored_objects_due ON stored_objects (expires_at) WHERE purged_at IS NULL;
