-- Every enrollment-changed event as published, so that a consumer about to take an
-- irreversible act on one (a webhook to another system) can confirm it by id
-- (GET /internal/enrollment-events/{event_id}). Written in the transaction that
-- publishes the event through the outbox.
CREATE TABLE enrollment_events (
    event_id      uuid        PRIMARY KEY,
    enrollment_id bigint      NOT NULL REFERENCES enrollments (id),
    event         jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX enrollment_events_enrollment ON enrollment_events (enrollment_id);
