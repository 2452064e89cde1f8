-- A paid event that cannot be applied as bought (its grant would pass the
-- balance cap) is kept with the reason, for an operator to settle by hand:
-- the provider has the money, so the event is acknowledged, not refused.
-- Such a payment changed no wallet and no membership.
ALTER TABLE payments ADD COLUMN review text;
CREATE INDEX payments_for_review ON payments (received_at) WHERE review IS NOT NULL;
