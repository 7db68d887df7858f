-- Published rows are kept for a retention window instead of being deleted at once, so
-- that a broker which has lost them (a restarted in-memory broker, a recreated topic)
-- can be given them again; consumers' inboxes make the second delivery harmless.
ALTER TABLE outbox ADD COLUMN published_at timestamptz;
ALTER TABLE outbox ADD COLUMN publish_count integer NOT NULL DEFAULT 0;

-- The relay reads what is pending in id order; pruning reads what is published by age.
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Names this database's relay on a broker: the relay keeps a marker topic named after
-- relay_id there. A broker without the marker has not received what this database
-- published (new, or restarted with empty storage), and the retained rows are sent again.
CREATE TABLE outbox_relay (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    relay_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox_relay DEFAULT VALUES;
