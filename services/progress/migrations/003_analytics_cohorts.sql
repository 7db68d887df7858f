-- Progress analytics by enrolment cohort (docs/progress.md, "How it stays fast").
--
-- Replaces migration 002's course-wide watch-time histogram, whose upserts ran inside
-- every progress write and which could not answer an enrolment range without summing
-- records. Now:
--   * each learner row carries the learner's cohort: the UTC day of the current
--     enrolment while it is active or completed, else NULL (outside every report);
--   * a progress write appends its histogram deltas, keyed by that cohort, to
--     analytics_deltas (an insert: no shared rows to lock, so no waits between writers);
--   * the service folds the deltas in the background into two histograms kept per block
--     of cohort days at five levels (1, 8, 64 and 512 days, and the whole course):
--     a coarse one by 32-second bucket (learners, completed, watch-time sum) and a fine one
--     by whole second (learners). A report sums the few blocks that tile its range, plus
--     the deltas not folded yet, in one snapshot.

DROP TRIGGER analytics_insert ON lesson_progress;
DROP TRIGGER analytics_update ON lesson_progress;
DROP TRIGGER analytics_delete ON lesson_progress;
DROP FUNCTION analytics_insert();
DROP FUNCTION analytics_update();
DROP FUNCTION analytics_delete();
DROP TABLE analytics_lesson_watch;

-- The cohort a learner's records count in: NULL when the enrolment is not in any report.
CREATE FUNCTION analytics_cohort(status text, enrolled_at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status IN ('active', 'completed') THEN (enrolled_at AT TIME ZONE 'UTC')::date END
$$;

-- The coarse histogram's bucket of a watch time (analytics_histogram.BUCKET_S).
CREATE FUNCTION analytics_bucket(watch_s integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT watch_s / 32 $$;

-- The blocks a cohort day counts in: level L < 4 is the aligned run of 8^L days numbered
-- (days since 1970-01-01) >> 3L; level 4 is the whole course (block 0). The report's
-- range decomposition (analytics_histogram.plan) uses the same numbering.
CREATE FUNCTION analytics_blocks(day date) RETURNS TABLE (level smallint, block integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT l::smallint, CASE WHEN l = 4 THEN 0 ELSE (day - DATE '1970-01-01') >> (3 * l) END
    FROM generate_series(0, 4) AS l
$$;

-- One row per learner of a course with an enrolment or a record. Its row lock orders a
-- learner's progress writes against changes of the learner's cohort (see the triggers).
ALTER TABLE analytics_learners
    ADD COLUMN cohort_day date,
    ALTER COLUMN last_activity_at DROP NOT NULL,
    ALTER COLUMN last_lesson_id DROP NOT NULL;
CREATE INDEX analytics_learners_cohort ON analytics_learners (course_id, cohort_day);

-- Histogram changes not folded yet: +1/-1 per started record entering or leaving a
-- (cohort day, lesson, whole-second watch time), pre-summed per statement.
CREATE TABLE analytics_deltas (
    id         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    course_id  bigint  NOT NULL,
    lesson_id  bigint  NOT NULL,
    cohort_day date    NOT NULL,
    watch_s    integer NOT NULL,
    n          integer NOT NULL,  -- started records
    c          integer NOT NULL   -- completed records
);
CREATE INDEX analytics_deltas_course ON analytics_deltas (course_id, cohort_day);

-- Blocks are contiguous in both keys, so a report reads one index range per block. Only
-- the folder updates them; a fill factor below 100 keeps its updates HOT. Rows that fold
-- to zero are deleted by the folder.
CREATE TABLE analytics_watch_coarse (
    course_id bigint   NOT NULL,
    level     smallint NOT NULL,
    block     integer  NOT NULL,
    lesson_id bigint   NOT NULL,
    bucket    integer  NOT NULL,
    learners  integer  NOT NULL,
    completed integer  NOT NULL,
    watch_sum bigint   NOT NULL,
    PRIMARY KEY (course_id, level, block, lesson_id, bucket)
) WITH (fillfactor = 80);

CREATE TABLE analytics_watch_fine (
    course_id bigint   NOT NULL,
    level     smallint NOT NULL,
    block     integer  NOT NULL,
    lesson_id bigint   NOT NULL,
    watch_s   integer  NOT NULL,
    learners  integer  NOT NULL,
    PRIMARY KEY (course_id, level, block, lesson_id, watch_s)
) WITH (fillfactor = 80);

-- Progress writes, one function for the three events. Statement-level triggers with
-- transition tables: one learner upsert and at most two delta inserts per statement (a
-- heartbeat flush of a thousand rows is one statement).
-- First every written learner's row is locked, in key order, and its last activity
-- updated (a running maximum: updated_at never moves backwards). Holding that lock, the
-- later statements read the learner's cohort as it stands: a cohort change takes the same
-- lock (see analytics_enrollments_changed). A plpgsql statement runs on a snapshot of its
-- own under READ COMMITTED, the isolation the service writes with.
-- Cohorts are looked up by scalar subqueries, one index probe per transition row: as
-- joins, the planner hashes the whole learners or enrollments table for a flush of a few
-- hundred rows (about 25 ms each, against 2 ms of probes).
CREATE FUNCTION analytics_records_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM 1 FROM analytics_learners a
        WHERE (a.course_id, a.user_id) IN (SELECT course_id, user_id FROM analytics_old)
        ORDER BY a.course_id, a.user_id
        FOR UPDATE;
    ELSE
        INSERT INTO analytics_learners AS a (course_id, user_id, cohort_day, last_activity_at, last_lesson_id)
        SELECT DISTINCT ON (r.course_id, r.user_id) r.course_id, r.user_id,
               (SELECT analytics_cohort(e.status, e.enrolled_at) FROM enrollments e
                WHERE e.user_id = r.user_id AND e.course_id = r.course_id),
               r.updated_at, r.lesson_id
        FROM analytics_new r
        ORDER BY r.course_id, r.user_id, r.updated_at DESC, r.lesson_id DESC
        ON CONFLICT (course_id, user_id) DO UPDATE SET
            last_activity_at = excluded.last_activity_at, last_lesson_id = excluded.last_lesson_id
            WHERE a.last_activity_at IS NULL
               OR (excluded.last_activity_at, excluded.last_lesson_id) > (a.last_activity_at, a.last_lesson_id);
        -- (ON CONFLICT DO UPDATE locks the conflicting row even where its WHERE is false.)
    END IF;
    IF TG_OP <> 'INSERT' THEN  -- the records as they were leave their buckets
        INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c)
        SELECT course_id, lesson_id, cohort_day, watch_s, -count(*), -count(*) FILTER (WHERE completed)
        FROM (SELECT r.course_id, r.lesson_id, r.completed, round(r.time_spent_seconds)::integer AS watch_s,
                     (SELECT a.cohort_day FROM analytics_learners a
                      WHERE a.course_id = r.course_id AND a.user_id = r.user_id) AS cohort_day
              FROM analytics_old r WHERE r.completed OR r.video_progress > 0 OR r.last_position > 0) r
        WHERE cohort_day IS NOT NULL
        GROUP BY 1, 2, 3, 4;
    END IF;
    IF TG_OP <> 'DELETE' THEN  -- and as they are now enter theirs
        INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c)
        SELECT course_id, lesson_id, cohort_day, watch_s, count(*), count(*) FILTER (WHERE completed)
        FROM (SELECT r.course_id, r.lesson_id, r.completed, round(r.time_spent_seconds)::integer AS watch_s,
                     (SELECT a.cohort_day FROM analytics_learners a
                      WHERE a.course_id = r.course_id AND a.user_id = r.user_id) AS cohort_day
              FROM analytics_new r WHERE r.completed OR r.video_progress > 0 OR r.last_position > 0) r
        WHERE cohort_day IS NOT NULL
        GROUP BY 1, 2, 3, 4;
    END IF;
    RETURN NULL;
END $$;

-- Enrolment changes (the replica of enrollment-changed). When a learner's cohort changes
-- (unenrolled, enrolled again on another day), their current records move from the old
-- cohort to the new one. Ordering against a concurrent progress write of the same learner:
--   1. this transaction makes sure the learner row exists and locks it;
--   2. the next statement (a new snapshot) reads the records and moves them.
-- A progress write that took the lock first has committed before step 2 reads, so its
-- records move with the rest; one that comes later waits for this commit and then sees
-- the new cohort. Its uncommitted records are read here as they were before it, and its
-- deltas, from those old values, land in the new cohort: the sums stay exact.
CREATE FUNCTION analytics_enrollments_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO analytics_learners (course_id, user_id)
    SELECT course_id, user_id FROM enrollments_new ORDER BY course_id, user_id
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM analytics_learners a
    WHERE (a.course_id, a.user_id) IN (SELECT course_id, user_id FROM enrollments_new)
    ORDER BY a.course_id, a.user_id
    FOR UPDATE;

    WITH moved AS (
        SELECT a.course_id, a.user_id, a.cohort_day AS old_day,
               analytics_cohort(n.status, n.enrolled_at) AS new_day
        FROM analytics_learners a
        JOIN enrollments_new n ON n.course_id = a.course_id AND n.user_id = a.user_id
        WHERE a.cohort_day IS DISTINCT FROM analytics_cohort(n.status, n.enrolled_at)
    ), relabelled AS (
        UPDATE analytics_learners a SET cohort_day = m.new_day
        FROM moved m WHERE a.course_id = m.course_id AND a.user_id = m.user_id
    )
    INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c)
    SELECT p.course_id, p.lesson_id, x.day, round(p.time_spent_seconds)::integer, sum(x.sign),
           sum(x.sign * p.completed::integer)
    FROM moved m
    JOIN lesson_progress p ON p.user_id = m.user_id AND p.course_id = m.course_id
    CROSS JOIN LATERAL (VALUES (m.old_day, -1), (m.new_day, 1)) AS x (day, sign)
    WHERE x.day IS NOT NULL AND (p.completed OR p.video_progress > 0 OR p.last_position > 0)
    GROUP BY p.course_id, p.lesson_id, x.day, round(p.time_spent_seconds)::integer
    HAVING sum(x.sign) <> 0 OR sum(x.sign * p.completed::integer) <> 0;
    RETURN NULL;
END $$;

-- Created before the backfill: CREATE TRIGGER locks both tables against writes until this
-- migration commits, so no write falls between the backfill and the triggers.
CREATE TRIGGER analytics_insert AFTER INSERT ON lesson_progress
    REFERENCING NEW TABLE AS analytics_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_records_written();
CREATE TRIGGER analytics_update AFTER UPDATE ON lesson_progress
    REFERENCING OLD TABLE AS analytics_old NEW TABLE AS analytics_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_records_written();
CREATE TRIGGER analytics_delete AFTER DELETE ON lesson_progress
    REFERENCING OLD TABLE AS analytics_old
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_records_written();
CREATE TRIGGER analytics_enrollments_insert AFTER INSERT ON enrollments
    REFERENCING NEW TABLE AS enrollments_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_enrollments_changed();
CREATE TRIGGER analytics_enrollments_update AFTER UPDATE ON enrollments
    REFERENCING NEW TABLE AS enrollments_new
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_enrollments_changed();

-- Backfill: a learner row and cohort for every enrolment, then both histograms from the
-- records, through one per-day histogram.
INSERT INTO analytics_learners (course_id, user_id, cohort_day)
SELECT course_id, user_id, analytics_cohort(status, enrolled_at) FROM enrollments
ON CONFLICT (course_id, user_id) DO UPDATE SET cohort_day = excluded.cohort_day;

CREATE TEMPORARY TABLE analytics_backfill ON COMMIT DROP AS
SELECT p.course_id, a.cohort_day, p.lesson_id, round(p.time_spent_seconds)::integer AS watch_s,
       count(*)::integer AS n, (count(*) FILTER (WHERE p.completed))::integer AS c
FROM lesson_progress p
JOIN analytics_learners a ON a.course_id = p.course_id AND a.user_id = p.user_id
WHERE a.cohort_day IS NOT NULL AND (p.completed OR p.video_progress > 0 OR p.last_position > 0)
GROUP BY 1, 2, 3, 4;

INSERT INTO analytics_watch_fine (course_id, level, block, lesson_id, watch_s, learners)
SELECT h.course_id, b.level, b.block, h.lesson_id, h.watch_s, sum(h.n)
FROM analytics_backfill h CROSS JOIN LATERAL analytics_blocks(h.cohort_day) b
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO analytics_watch_coarse (course_id, level, block, lesson_id, bucket, learners, completed, watch_sum)
SELECT h.course_id, b.level, b.block, h.lesson_id, analytics_bucket(h.watch_s), sum(h.n), sum(h.c),
       sum(h.n::bigint * h.watch_s)
FROM analytics_backfill h CROSS JOIN LATERAL analytics_blocks(h.cohort_day) b
GROUP BY 1, 2, 3, 4, 5;
