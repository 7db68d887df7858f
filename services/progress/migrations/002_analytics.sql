-- Progress analytics (docs/progress.md, "Analytics"): indexes for the per-learner queries
-- and two aggregates maintained by statement-level triggers on lesson_progress, in the
-- transaction of every progress write.

-- Per-learner queries of one course (enrolled, completed, drop-off, time to completion).
CREATE INDEX enrollments_course_enrolled ON enrollments (course_id, enrolled_at)
    INCLUDE (user_id, status, enrollment_id);
CREATE INDEX course_completions_course ON course_completions (course_id, user_id, enrollment_id)
    INCLUDE (completed_at);

-- Watch-time histogram of started learner-lessons: per (course, lesson, watch time in whole
-- seconds), how many records ("learners") and how many of them are completed. "Started"
-- is the progress states' in_progress or completed (a position above 0, or completed).
-- Every lesson figure of the analytics (started, completed, average and median watch time,
-- fraction watched) is derived from it exactly. Rows at zero stay (no delete/insert churn);
-- the fill factor leaves room for HOT updates.
CREATE TABLE analytics_lesson_watch (
    course_id bigint  NOT NULL,
    lesson_id bigint  NOT NULL,
    watch_s   integer NOT NULL,
    learners  integer NOT NULL,
    completed integer NOT NULL,
    PRIMARY KEY (course_id, lesson_id, watch_s)
) WITH (fillfactor = 70);

-- Per (course, learner): the latest updated_at of any of the learner's records in the
-- course and that record's lesson (ties: the higher lesson id). updated_at never moves
-- backwards, so the running maximum equals the maximum over the current records.
CREATE TABLE analytics_learners (
    course_id        bigint      NOT NULL,
    user_id          text        NOT NULL,
    last_activity_at timestamptz NOT NULL,
    last_lesson_id   bigint      NOT NULL,
    PRIMARY KEY (course_id, user_id)
) WITH (fillfactor = 70);

-- Deltas are applied sorted by key, so concurrent writers lock aggregate rows in the same
-- order and cannot deadlock on them; increments commute, so any interleaving of committed
-- writes leaves the aggregates equal to a computation from scratch. A rolled-back write
-- rolls its deltas back with it. Statement-level triggers with transition tables: one
-- aggregated upsert per statement (a heartbeat flush of a thousand rows is one), not one
-- per row. A plpgsql body can only name the transition tables its event has, hence one
-- function per event.
CREATE FUNCTION analytics_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_lesson_watch AS w (course_id, lesson_id, watch_s, learners, completed)
    SELECT course_id, lesson_id, watch_s, sum(n), sum(c)
    FROM (
        SELECT course_id, lesson_id, round(time_spent_seconds)::integer AS watch_s, 1 AS n,
               completed::integer AS c
        FROM analytics_new WHERE completed OR video_progress > 0 OR last_position > 0
    ) d
    GROUP BY course_id, lesson_id, watch_s
    HAVING sum(n) <> 0 OR sum(c) <> 0
    ORDER BY course_id, lesson_id, watch_s
    ON CONFLICT (course_id, lesson_id, watch_s) DO UPDATE
        SET learners = w.learners + excluded.learners, completed = w.completed + excluded.completed;
    -- The latest write per learner; the WHERE keeps the maximum under any commit order.
    INSERT INTO analytics_learners AS a (course_id, user_id, last_activity_at, last_lesson_id)
    SELECT DISTINCT ON (course_id, user_id) course_id, user_id, updated_at, lesson_id
    FROM analytics_new
    ORDER BY course_id, user_id, updated_at DESC, lesson_id DESC
    ON CONFLICT (course_id, user_id) DO UPDATE
        SET last_activity_at = excluded.last_activity_at, last_lesson_id = excluded.last_lesson_id
        WHERE (excluded.last_activity_at, excluded.last_lesson_id) > (a.last_activity_at, a.last_lesson_id);
    RETURN NULL;
END $$;

CREATE FUNCTION analytics_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_lesson_watch AS w (course_id, lesson_id, watch_s, learners, completed)
    SELECT course_id, lesson_id, watch_s, sum(n), sum(c)
    FROM (
        SELECT course_id, lesson_id, round(time_spent_seconds)::integer AS watch_s, 1 AS n,
               completed::integer AS c
        FROM analytics_new WHERE completed OR video_progress > 0 OR last_position > 0
        UNION ALL
        SELECT course_id, lesson_id, round(time_spent_seconds)::integer AS watch_s, -1 AS n,
               -(completed::integer) AS c
        FROM analytics_old WHERE completed OR video_progress > 0 OR last_position > 0
    ) d
    GROUP BY course_id, lesson_id, watch_s
    HAVING sum(n) <> 0 OR sum(c) <> 0
    ORDER BY course_id, lesson_id, watch_s
    ON CONFLICT (course_id, lesson_id, watch_s) DO UPDATE
        SET learners = w.learners + excluded.learners, completed = w.completed + excluded.completed;
    -- The latest write per learner; the WHERE keeps the maximum under any commit order.
    INSERT INTO analytics_learners AS a (course_id, user_id, last_activity_at, last_lesson_id)
    SELECT DISTINCT ON (course_id, user_id) course_id, user_id, updated_at, lesson_id
    FROM analytics_new
    ORDER BY course_id, user_id, updated_at DESC, lesson_id DESC
    ON CONFLICT (course_id, user_id) DO UPDATE
        SET last_activity_at = excluded.last_activity_at, last_lesson_id = excluded.last_lesson_id
        WHERE (excluded.last_activity_at, excluded.last_lesson_id) > (a.last_activity_at, a.last_lesson_id);
    RETURN NULL;
END $$;

CREATE FUNCTION analytics_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_lesson_watch AS w (course_id, lesson_id, watch_s, learners, completed)
    SELECT course_id, lesson_id, watch_s, sum(n), sum(c)
    FROM (
        SELECT course_id, lesson_id, round(time_spent_seconds)::integer AS watch_s, -1 AS n,
               -(completed::integer) AS c
        FROM analytics_old WHERE completed OR video_progress > 0 OR last_position > 0
    ) d
    GROUP BY course_id, lesson_id, watch_s
    HAVING sum(n) <> 0 OR sum(c) <> 0
    ORDER BY course_id, lesson_id, watch_s
    ON CONFLICT (course_id, lesson_id, watch_s) DO UPDATE
        SET learners = w.learners + excluded.learners, completed = w.completed + excluded.completed;
    RETURN NULL;
END $$;

-- Created before the backfill: CREATE TRIGGER locks lesson_progress against writes until
-- this migration commits, so no write falls between the backfill and the triggers.
CREATE TRIGGER analytics_insert AFTER INSERT ON lesson_progress
    REFERENCING NEW TABLE AS analytics_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_insert();
CREATE TRIGGER analytics_update AFTER UPDATE ON lesson_progress
    REFERENCING OLD TABLE AS analytics_old NEW TABLE AS analytics_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_update();
CREATE TRIGGER analytics_delete AFTER DELETE ON lesson_progress
    REFERENCING OLD TABLE AS analytics_old
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_delete();

-- Backfill from the records already stored.
INSERT INTO analytics_lesson_watch (course_id, lesson_id, watch_s, learners, completed)
SELECT course_id, lesson_id, round(time_spent_seconds)::integer, count(*), count(*) FILTER (WHERE completed)
FROM lesson_progress WHERE completed OR video_progress > 0 OR last_position > 0
GROUP BY 1, 2, 3;
INSERT INTO analytics_learners (course_id, user_id, last_activity_at, last_lesson_id)
SELECT DISTINCT ON (course_id, user_id) course_id, user_id, updated_at, lesson_id
FROM lesson_progress ORDER BY course_id, user_id, updated_at DESC, lesson_id DESC;
