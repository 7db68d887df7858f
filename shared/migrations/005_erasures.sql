-- Erasure of a learner (learner-erased, shared/erasure.py), in every service's database.
-- Enrollment records each request here; every service records here that it has erased the
-- learner (its receipt, read by GET /internal/erasures/{event_id}), in the transaction
-- that erased them. The inbox reads it too: an event about a learner produced before their
-- erasure and delivered after it has no effect (shared/inbox.py).
-- It never holds the user id: `subject` is its SHA-256 (hex), enough to recognise the same
-- learner asked for again and to check that an event names the learner of the request.
CREATE TABLE erasures (
    event_id     uuid        PRIMARY KEY,  -- the learner-erased event
    subject      text        NOT NULL,
    requested_at timestamptz NOT NULL,
    erased_at    timestamptz NOT NULL DEFAULT now(),
    summary      jsonb       NOT NULL DEFAULT '{}',  -- rows erased, by kind (counts only)
    completed_at timestamptz  -- enrollment only: when every service had reported it done
);

CREATE INDEX erasures_subject ON erasures (subject, requested_at);
