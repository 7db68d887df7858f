-- Viewing sessions (docs/progress.md, "Viewing sessions"). A learner's heartbeats may reach
-- any progress replica, so a session lives here, not in one replica's memory.
--
-- video_sessions_current: the learner's open session, one row per learner, opened and
-- extended by the heartbeat flush (one statement per flush batch). A flush that brings
-- another lesson, another attempt or playback after an idle gap starts a new session in
-- the row; the trigger below keeps the session it replaces, as ended, in video_sessions.
CREATE TABLE video_sessions_current (
    user_id text PRIMARY KEY,
    session_id uuid NOT NULL,
    course_id bigint NOT NULL,
    lesson_id bigint NOT NULL,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    start_position double precision NOT NULL,
    end_position double precision NOT NULL,
    -- media ranges played in this session, flattened [start, end, ...] (progress_watch)
    played double precision[] NOT NULL DEFAULT '{}'
);
-- The closing loop looks for sessions idle since a moment.
CREATE INDEX video_sessions_current_idle ON video_sessions_current (last_seen_at);

-- Sessions that ended: first without their event (to be published by the closing loop),
-- then with the video-session-ended event written to the outbox in the same transaction.
CREATE TABLE video_sessions (
    session_id uuid PRIMARY KEY,
    user_id text NOT NULL,
    course_id bigint NOT NULL,
    lesson_id bigint NOT NULL,
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    start_position double precision NOT NULL,
    end_position double precision NOT NULL,
    played double precision[] NOT NULL,
    event_id uuid UNIQUE,
    event jsonb
);
CREATE INDEX video_sessions_unpublished ON video_sessions (last_seen_at) WHERE event IS NULL;

CREATE FUNCTION video_session_replaced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO video_sessions (session_id, user_id, course_id, lesson_id, attempt, started_at, last_seen_at,
                                start_position, end_position, played)
    VALUES (OLD.session_id, OLD.user_id, OLD.course_id, OLD.lesson_id, OLD.attempt, OLD.started_at,
            OLD.last_seen_at, OLD.start_position, OLD.end_position, OLD.played);
    RETURN NEW;
END $$;

-- Only when the session changes: the usual flush (a session going on) calls no function.
CREATE TRIGGER video_session_replaced BEFORE UPDATE ON video_sessions_current
    FOR EACH ROW WHEN (NEW.session_id <> OLD.session_id) EXECUTE FUNCTION video_session_replaced();
