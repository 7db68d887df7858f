-- Events a consumer has applied, written in the same transaction as the effect:
-- a redelivered event finds its row and changes nothing.
CREATE TABLE inbox (
    consumer   text        NOT NULL,
    event_id   uuid        NOT NULL,
    topic      text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE INDEX inbox_applied_at ON inbox (applied_at);
