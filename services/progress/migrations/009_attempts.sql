-- Attempts (recertification, docs/progress.md "Attempts"). An enrollment's `attempt` grows
-- when the learner's course is reset; the learner then starts again at 0 %. The records of
-- the attempt that ended move to lesson_progress_history (readable by staff), in the
-- transaction that stores the higher attempt in the replica, under the enrollment row lock
-- completions take. lesson_progress only ever holds the current attempt's records.

ALTER TABLE enrollments ADD COLUMN attempt integer NOT NULL DEFAULT 1;
-- The analytics' per-learner figures join completions on it: keep them index-only.
DROP INDEX enrollments_course_enrolled;
CREATE INDEX enrollments_course_enrolled ON enrollments (course_id, enrolled_at)
    INCLUDE (user_id, status, enrollment_id, attempt);

-- The attempt a record belongs to: the heartbeat flush writes a record only into the
-- attempt it was read in (it joins the enrollment replica on it), so playback buffered
-- before a reset never reaches the new attempt.
ALTER TABLE lesson_progress ADD COLUMN attempt integer NOT NULL DEFAULT 1;

-- The records of earlier attempts, column for column as lesson_progress (LIKE: the columns
-- it has at this point, in its order, so the reset copies with DELETE ... RETURNING * into
-- INSERT ... SELECT *). A later migration that adds a column to lesson_progress must add
-- the same column, in the same place, here too; otherwise the copy fails (loudly).
CREATE TABLE lesson_progress_history (
    LIKE lesson_progress,
    PRIMARY KEY (user_id, course_id, attempt, lesson_id)
);

-- One course-completed per (learner, course, enrollment, attempt).
ALTER TABLE course_completions ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE course_completions DROP CONSTRAINT course_completions_pkey,
    ADD PRIMARY KEY (user_id, course_id, enrollment_id, attempt);
-- The analytics' per-learner figures count the completion of the current attempt.
DROP INDEX course_completions_course;
CREATE INDEX course_completions_course ON course_completions (course_id, user_id, enrollment_id, attempt)
    INCLUDE (completed_at);

-- From certificate-issued: one certificate per attempt.
ALTER TABLE certificates ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE certificates DROP CONSTRAINT certificates_pkey, ADD PRIMARY KEY (user_id, course_id, attempt);
