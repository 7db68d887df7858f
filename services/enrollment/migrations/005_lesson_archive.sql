-- Archived lessons: they leave the course (its lessons as answered and on course-catalog,
-- which is what progress counts), but the row stays, so the learners' records of the
-- lesson keep naming a lesson that existed. An archived lesson has no position: the live
-- ones stay numbered 1..n, and the (course_id, position) uniqueness ignores NULLs.
ALTER TABLE lessons
    ADD COLUMN archived_at timestamptz,
    ALTER COLUMN position DROP NOT NULL,
    ADD CONSTRAINT lessons_archived_without_position CHECK ((archived_at IS NULL) = (position IS NOT NULL));
