-- Replicas agree on time spent and positions (docs/progress.md, "Several replicas").
--
-- Time spent is the length of a union of wall-clock intervals: the seconds some replica
-- saw the learner watching. A flush brings each record the intervals its replica credited
-- since the last one; the record keeps the union of its recent intervals (`credited`,
-- flattened [start, end, ...] in epoch seconds) and adds only the part not in it yet, so
-- seconds seen by two replicas count once. Intervals more than a horizon before the
-- latest fold into `credited_until`: nothing before it is credited again.
--
-- Positions: `position_seen_at` is the server time of the heartbeat that set the position.
-- A position replaces the stored one when its client timestamp is not older (both have
-- one), else when it was received no earlier (services/progress/domain.position_newer).

ALTER TABLE lesson_progress
    ADD COLUMN position_seen_at timestamptz,
    ADD COLUMN credited double precision[] NOT NULL DEFAULT '{}',
    -- Records that existed before this migration were credited without intervals: nothing
    -- before now is credited to them again. (A default that is not volatile is stored once,
    -- not written into every row: no rewrite, no trigger.) New records start without.
    ADD COLUMN credited_until double precision DEFAULT extract(epoch FROM now());
ALTER TABLE lesson_progress ALTER COLUMN credited_until DROP DEFAULT;

-- services/progress/domain.credit, step for step: merge `fresh` (sorted, disjoint) into
-- `stored` (sorted, disjoint, none before `until`), ignoring what lies before `until`;
-- `added` is what the union gained. Then the watermark rises to `horizon` before the
-- latest end, and further while more than `max_intervals` intervals remain.
CREATE FUNCTION progress_credit(
    stored double precision[], until double precision, fresh double precision[],
    horizon double precision DEFAULT 300, max_intervals integer DEFAULT 16,
    OUT added double precision, OUT credited double precision[], OUT credited_until double precision)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    ns integer := coalesce(array_length(stored, 1), 0);
    nf integer := coalesce(array_length(fresh, 1), 0);
    i integer := 1;
    j integer := 1;
    s double precision;
    e double precision;
    cs double precision;
    ce double precision;
    before double precision := 0;
    total double precision := 0;
    merged double precision[] := '{}';
    n integer;
    k integer;
BEGIN
    credited_until := until;
    IF nf = 2 AND (ns = 0 OR fresh[1] >= stored[ns - 1]) THEN
        -- The usual flush: one interval, at or after the start of the last one stored.
        s := greatest(fresh[1], until);
        e := fresh[2];
        IF e <= s THEN  -- nothing after the watermark: only the trimming below
            IF ns = 0 THEN
                added := 0;
                credited := stored;
                RETURN;
            END IF;
            merged := stored;
            added := 0;
        ELSIF ns = 0 THEN
            merged := ARRAY[s, e];
            added := e - s;
        ELSIF s <= stored[ns] THEN
            merged := stored;
            added := greatest(e - stored[ns], 0);
            merged[ns] := greatest(stored[ns], e);
        ELSE
            merged := stored || ARRAY[s, e];
            added := e - s;
        END IF;
        ce := merged[array_length(merged, 1)];
    ELSE
        WHILE i < ns LOOP
            before := before + (stored[i + 1] - stored[i]);
            i := i + 2;
        END LOOP;
        i := 1;
        LOOP
            IF i < ns AND (j >= nf OR stored[i] <= fresh[j]) THEN
                s := stored[i];
                e := stored[i + 1];
                i := i + 2;
            ELSIF j < nf THEN
                s := greatest(fresh[j], until);  -- greatest ignores a NULL watermark
                e := fresh[j + 1];
                j := j + 2;
                CONTINUE WHEN e <= s;
            ELSE
                EXIT;
            END IF;
            IF cs IS NULL THEN
                cs := s;
                ce := e;
            ELSIF s <= ce THEN
                ce := greatest(ce, e);
            ELSE
                merged := merged || ARRAY[cs, ce];
                total := total + (ce - cs);
                cs := s;
                ce := e;
            END IF;
        END LOOP;
        IF cs IS NULL THEN
            added := 0;
            credited := merged;
            RETURN;
        END IF;
        merged := merged || ARRAY[cs, ce];
        total := total + (ce - cs);
        added := greatest(total - before, 0);
    END IF;

    -- Trim: the watermark rises to `horizon` before the latest end (ce), and further while
    -- more than `max_intervals` intervals remain; what lies before it is dropped.
    credited_until := greatest(until, ce - horizon);
    n := array_length(merged, 1);
    k := 1;
    WHILE k < n AND merged[k + 1] <= credited_until LOOP
        k := k + 2;
    END LOOP;
    IF (n - k + 1) / 2 > max_intervals THEN
        k := n - 2 * max_intervals + 1;
        credited_until := greatest(credited_until, merged[k - 1]);
    END IF;
    credited := merged[k:n];
    IF credited[1] < credited_until THEN
        credited[1] := credited_until;
    END IF;
END $$;
