-- Attempts: a learner's course can be reset (by staff, or for recertification) and taken
-- again. The enrollment keeps one row per (learner, course); `attempt` counts the times it
-- was started (1 for the first) and travels on enrollment-changed, so progress and
-- certificates keep one completion and one certificate per attempt.
ALTER TABLE enrollments ADD COLUMN attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1);

-- Completions older than this many days are reset for a new attempt; null: never.
ALTER TABLE courses ADD COLUMN recertify_after_days integer
    CHECK (recertify_after_days BETWEEN 1 AND 36500);

-- One notice per (enrollment, attempt): the learner is told (recertification-scheduled,
-- kept here as published for the internal confirmation) before the attempt is reset at
-- reset_at. The primary key makes the notice, and so the reset, happen at most once.
CREATE TABLE recertification_notices (
    enrollment_id bigint      NOT NULL REFERENCES enrollments (id),
    attempt       integer     NOT NULL,
    completed_at  timestamptz NOT NULL,
    reset_at      timestamptz NOT NULL,
    event_id      uuid        NOT NULL UNIQUE,
    event         jsonb       NOT NULL,
    created_at    timestamptz NOT NULL,
    -- Set once the attempt was reset, or found no longer due (the learner was reset by
    -- hand, unenrolled, ...): the job looks at pending notices only.
    settled_at    timestamptz,
    PRIMARY KEY (enrollment_id, attempt)
);

CREATE INDEX recertification_notices_due ON recertification_notices (reset_at) WHERE settled_at IS NULL;
-- The job looks for completed enrollments of the courses that recertify.
CREATE INDEX enrollments_course_completed ON enrollments (course_id, completed_at) WHERE status = 'completed';
