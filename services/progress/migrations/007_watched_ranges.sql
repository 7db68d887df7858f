-- Watched coverage (docs/progress.md, "Watched coverage").
--
-- Each record keeps the media ranges the learner watched (`watched`, flattened
-- [start, end, ...] in seconds of the video: sorted, disjoint, at most 50) and their
-- length (`watched_seconds`). A flush or a completion brings the ranges its replica saw
-- since the last one; `progress_watch` merges them into the stored ones under the row
-- lock, so replicas flushing in any order, or the same flush applied twice, agree.
--
-- Analytics: the cohort histograms (migration 003) also sum each started record's
-- watched seconds (whole seconds), so the engagement figures give the average coverage
-- per lesson beside the watch time. Records start with nothing watched, which the
-- histograms already hold (a sum of zero): nothing to backfill.

ALTER TABLE lesson_progress
    ADD COLUMN watched double precision[] NOT NULL DEFAULT '{}',
    ADD COLUMN watched_seconds double precision NOT NULL DEFAULT 0;

-- services/progress/domain.watched_union, step for step: the ranges of both merged
-- (sorted by start then end; overlapping and touching ranges joined), then, beyond
-- `max_ranges`, the shortest dropped (of equal lengths, the earlier first); and the total
-- length, summed in order. Given the stored length (`stored_seconds`), the usual flushes
-- take a short cut: nothing fresh, or one range from the start of the last one on (playback
-- going on), which extends the last range or follows it; the length then grows by what
-- the range adds (equal to the sum up to rounding).
CREATE FUNCTION progress_watch(
    stored double precision[], fresh double precision[], max_ranges integer DEFAULT 50,
    stored_seconds double precision DEFAULT NULL,
    OUT watched double precision[], OUT watched_seconds double precision)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    ns integer := coalesce(array_length(stored, 1), 0);
    nf integer := coalesce(array_length(fresh, 1), 0);
    r record;
    cs double precision;
    ce double precision;
    merged double precision[] := '{}';
    n integer;
    k integer;
BEGIN
    IF stored_seconds IS NOT NULL THEN
        IF nf = 0 THEN
            watched := stored;
            watched_seconds := stored_seconds;
            RETURN;
        END IF;
        IF nf = 2 AND fresh[2] > fresh[1] AND (ns = 0 OR fresh[1] >= stored[ns - 1]) THEN
            IF ns = 0 THEN
                watched := fresh;
                watched_seconds := fresh[2] - fresh[1];
                RETURN;
            ELSIF fresh[1] <= stored[ns] THEN
                watched := stored;
                watched[ns] := greatest(stored[ns], fresh[2]);
                watched_seconds := stored_seconds + (watched[ns] - stored[ns]);
                RETURN;
            ELSIF ns / 2 < greatest(max_ranges, 1) THEN
                watched := stored || fresh;
                watched_seconds := stored_seconds + (fresh[2] - fresh[1]);
                RETURN;
            END IF;
        END IF;
    END IF;
    FOR r IN
        SELECT b.v[i] AS s, b.v[i + 1] AS e
        FROM (SELECT coalesce(stored, '{}') || coalesce(fresh, '{}') AS v) b,
             generate_series(1, coalesce(array_length(b.v, 1), 0) - 1, 2) AS i
        WHERE b.v[i + 1] > b.v[i]
        ORDER BY 1, 2
    LOOP
        IF cs IS NULL THEN
            cs := r.s;
            ce := r.e;
        ELSIF r.s <= ce THEN
            ce := greatest(ce, r.e);
        ELSE
            merged := merged || ARRAY[cs, ce];
            cs := r.s;
            ce := r.e;
        END IF;
    END LOOP;
    IF cs IS NOT NULL THEN
        merged := merged || ARRAY[cs, ce];
    END IF;
    n := coalesce(array_length(merged, 1), 0) / 2;
    IF n > greatest(max_ranges, 1) THEN
        SELECT array_agg(p.v ORDER BY kept.k, p.j) INTO merged
        FROM (SELECT g.k, merged[2 * g.k - 1] AS s, merged[2 * g.k] AS e,
                     row_number() OVER (ORDER BY merged[2 * g.k] - merged[2 * g.k - 1], g.k) AS rn
              FROM generate_series(1, n) AS g (k)) kept
        CROSS JOIN LATERAL (VALUES (1, kept.s), (2, kept.e)) AS p (j, v)
        WHERE kept.rn > n - greatest(max_ranges, 1);
        n := greatest(max_ranges, 1);
    END IF;
    watched := merged;
    watched_seconds := 0;
    k := 1;
    WHILE k < 2 * n LOOP
        watched_seconds := watched_seconds + (merged[k + 1] - merged[k]);
        k := k + 2;
    END LOOP;
END $$;

-- The histograms' watched seconds: a delta carries the sum of its records' (rounded)
-- watched seconds, the coarse histogram the sum per bucket.
ALTER TABLE analytics_deltas ADD COLUMN watched bigint NOT NULL DEFAULT 0;
ALTER TABLE analytics_watch_coarse ADD COLUMN watched_sum bigint NOT NULL DEFAULT 0;

-- Migration 003's function, with the watched seconds summed into each delta.
CREATE OR REPLACE FUNCTION analytics_records_written() RETURNS trigger LANGUAGE plpgsql AS $$
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
    END IF;
    IF TG_OP <> 'INSERT' THEN
        INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c, watched)
        SELECT course_id, lesson_id, cohort_day, watch_s, -count(*), -count(*) FILTER (WHERE completed),
               -sum(watched_s)
        FROM (SELECT r.course_id, r.lesson_id, r.completed, round(r.time_spent_seconds)::integer AS watch_s,
                     round(r.watched_seconds)::bigint AS watched_s,
                     (SELECT a.cohort_day FROM analytics_learners a
                      WHERE a.course_id = r.course_id AND a.user_id = r.user_id) AS cohort_day
              FROM analytics_old r WHERE r.completed OR r.video_progress > 0 OR r.last_position > 0) r
        WHERE cohort_day IS NOT NULL
        GROUP BY 1, 2, 3, 4;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c, watched)
        SELECT course_id, lesson_id, cohort_day, watch_s, count(*), count(*) FILTER (WHERE completed),
               sum(watched_s)
        FROM (SELECT r.course_id, r.lesson_id, r.completed, round(r.time_spent_seconds)::integer AS watch_s,
                     round(r.watched_seconds)::bigint AS watched_s,
                     (SELECT a.cohort_day FROM analytics_learners a
                      WHERE a.course_id = r.course_id AND a.user_id = r.user_id) AS cohort_day
              FROM analytics_new r WHERE r.completed OR r.video_progress > 0 OR r.last_position > 0) r
        WHERE cohort_day IS NOT NULL
        GROUP BY 1, 2, 3, 4;
    END IF;
    RETURN NULL;
END $$;

-- Migration 003's function, with the watched seconds moving with the records.
CREATE OR REPLACE FUNCTION analytics_enrollments_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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
    INSERT INTO analytics_deltas (course_id, lesson_id, cohort_day, watch_s, n, c, watched)
    SELECT p.course_id, p.lesson_id, x.day, round(p.time_spent_seconds)::integer, sum(x.sign),
           sum(x.sign * p.completed::integer), sum(x.sign * round(p.watched_seconds)::bigint)
    FROM moved m
    JOIN lesson_progress p ON p.user_id = m.user_id AND p.course_id = m.course_id
    CROSS JOIN LATERAL (VALUES (m.old_day, -1), (m.new_day, 1)) AS x (day, sign)
    WHERE x.day IS NOT NULL AND (p.completed OR p.video_progress > 0 OR p.last_position > 0)
    GROUP BY p.course_id, p.lesson_id, x.day, round(p.time_spent_seconds)::integer
    HAVING sum(x.sign) <> 0 OR sum(x.sign * p.completed::integer) <> 0
        OR sum(x.sign * round(p.watched_seconds)::bigint) <> 0;
    RETURN NULL;
END $$;
