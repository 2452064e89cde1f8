-- A monthly gift whose whole month passed while its account was
-- suspended lapses at reinstatement: it is never granted, and says when
-- it lapsed. A gift is granted or lapsed, never both.
ALTER TABLE membership_gifts
    ADD COLUMN lapsed_at timestamptz,
    ADD CONSTRAINT membership_gifts_granted_or_lapsed
        CHECK (granted_at IS NULL OR lapsed_at IS NULL);

DROP INDEX membership_gifts_due;
CREATE INDEX membership_gifts_due ON membership_gifts (starts_at)
    WHERE granted_at IS NULL AND lapsed_at IS NULL;
