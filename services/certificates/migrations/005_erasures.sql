-- Erasure of a learner (learner-erased): the record that this service has erased one, so
-- that the request's status can be read (GET /internal/erasures/{event_id}) and a
-- redelivered request changes nothing. It never holds the user id: `subject` is its
-- SHA-256 (shared/erasure.py), enough to recognise the same learner asked for again.
CREATE TABLE erasures (
    event_id     uuid        PRIMARY KEY,  -- the learner-erased event
    subject      text        NOT NULL,
    requested_at timestamptz NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT now(),
    summary      jsonb       NOT NULL DEFAULT '{}',  -- rows erased, by kind (counts only)
    completed_at timestamptz  -- enrollment only: when every service had reported it done
);

CREATE INDEX erasures_subject ON erasures (subject);
