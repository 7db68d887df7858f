-- Recalculation of a course's learners after a catalog change altered its required
-- lessons (docs/progress.md, "Courses that change"). Written in the transaction that
-- stores the newer catalog revision in the replica; worked through in batches of
-- enrollments ordered by user_id by a background loop in each progress process, which
-- claims due rows with FOR UPDATE SKIP LOCKED and a lease (due_at moves forward). Each
-- batch commits with its progress-recalculated outbox row and the advanced cursor; the
-- row is deleted once every enrollment has been recalculated.
CREATE TABLE course_recalculations (
    course_id            bigint      PRIMARY KEY,
    -- The newest revision that altered the required lessons (the job works on whatever
    -- revision the replica holds when it runs a batch, at least this one).
    revision             bigint      NOT NULL,
    -- The required lesson ids the batches so far were computed with: another set means
    -- the job starts again from the first learner. NULL: not started.
    required_lesson_ids  bigint[],
    -- The last learner (user_id) recalculated; NULL: none yet.
    cursor               text,
    due_at               timestamptz NOT NULL DEFAULT now(),
    attempts             integer     NOT NULL DEFAULT 0,
    last_error           text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX course_recalculations_due ON course_recalculations (due_at);

-- The batches walk one course's enrollments in user_id order.
CREATE INDEX enrollments_course_user ON enrollments (course_id, user_id);

-- What a completion was decided on: the catalog revision and its required lessons. A later
-- change never revokes it; the progress answer lists what became required since. NULL for
-- completions decided before these were recorded.
ALTER TABLE course_completions
    ADD COLUMN course_revision      bigint,
    ADD COLUMN required_lesson_ids  bigint[];
