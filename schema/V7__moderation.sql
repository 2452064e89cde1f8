-- Moderation evidence (ToS 3.2, 9.2): each refused prompt keeps the prompt,
-- who decided and how sure, and whether it counts toward automatic
-- suspension; each suspension or reinstatement on content grounds is kept
-- with the refusals that caused it.
ALTER TABLE content_violations
    ADD COLUMN counted boolean NOT NULL DEFAULT true,
    ADD COLUMN prompt  text NOT NULL DEFAULT '',
    ADD COLUMN refusal jsonb;

CREATE TABLE moderation_actions (
    id         bigserial PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id),
    kind       text NOT NULL CHECK (kind IN ('suspended', 'reinstated')),
    by_whom    text NOT NULL,
    note       text,
    evidence   jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX moderation_actions_by_user ON moderation_actions (user_id, created_at);
CREATE INDEX moderation_actions_by_kind ON moderation_actions (kind, created_at);
