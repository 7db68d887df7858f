-- /metrics counts the deliveries still to be made by status at every scrape: pending and
-- sending through their partial indexes, held (a disabled destination's) through this one,
-- so a scrape never reads the delivered history.
CREATE INDEX deliveries_held ON deliveries (destination_kind) WHERE status = 'held';
