-- Why an inbox marker exists: the consumer applied the event ('applied'), or it gave up on
-- it and dead-lettered it ('dead_letter', so that a redelivery is not dead-lettered twice).
-- A replay removes only a marker of the second kind: an applied event stays applied.
ALTER TABLE inbox ADD COLUMN origin text NOT NULL DEFAULT 'applied'
    CHECK (origin IN ('applied', 'dead_letter'));

-- The messages this database's consumers gave up on, written in the same transaction as
-- their dead-letter outbox row: listed, shown and replayed by the admin API and the CLI.
-- Key and value are the bytes as they arrived (a key may hold a NUL, which text cannot).
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    consumer_group  text        NOT NULL,
    source_topic    text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    message_key     bytea,
    value           bytea       NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    event_id        uuid,                   -- when the value names one
    event_type      text,
    letter_id       uuid        NOT NULL,   -- the event_id of the DeadLetter on the dead-letter topic
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- pending: nothing done; replayed: written back to its topic; applied: found applied
    -- by its consumer when a replay was asked for, so nothing was written.
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'replayed', 'applied')),
    replayed_at     timestamptz,
    replay_count    integer     NOT NULL DEFAULT 0,
    replayed_by     text
);

CREATE INDEX dead_letters_created ON dead_letters (created_at, id);
CREATE INDEX dead_letters_topic ON dead_letters (source_topic, created_at, id);
CREATE INDEX dead_letters_event ON dead_letters (consumer_group, event_id) WHERE event_id IS NOT NULL;

-- A replay goes out through the outbox with the original key's bytes (possibly not text).
ALTER TABLE outbox ADD COLUMN raw_key bytea;
