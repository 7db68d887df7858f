-- Completions that could not be confirmed with the enrollment service (the owner of the
-- catalog and the enrollments): the lesson was recorded, but its lesson-completed event (whose
-- figures depend on the catalog) and the course-completed decision wait here. Written in the
-- completion's transaction; services/progress/tracking.py re-checks them with the owner in
-- the background, publishes and decides on the confirmed data, then deletes the row.
-- Claimed with FOR UPDATE SKIP LOCKED and a lease (due_at moves forward), so several
-- progress processes never work on one row at once.
CREATE TABLE pending_confirmations (
    user_id       text        NOT NULL,
    course_id     bigint      NOT NULL,
    -- The learner's name and e-mail from the token of the completing request, for the
    -- course-completed event (else the enrollment's profile is used).
    user_name     text        NOT NULL DEFAULT '',
    user_email    text        NOT NULL DEFAULT '',
    -- Lessons completed unconfirmed, whose lesson-completed events are still to be written.
    lesson_ids    bigint[]    NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    due_at        timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text,
    PRIMARY KEY (user_id, course_id)
);
CREATE INDEX pending_confirmations_due ON pending_confirmations (due_at);
