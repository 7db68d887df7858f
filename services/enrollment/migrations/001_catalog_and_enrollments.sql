-- The course catalog this service owns. Every change bumps `revision` and queues the
-- whole course on the course-catalog topic; last_event_id/last_event_at name that event,
-- so the internal API answers with exactly what was published.
CREATE TABLE courses (
    id                           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title                        text        NOT NULL,
    slug                         text        NOT NULL UNIQUE,
    description                  text        NOT NULL DEFAULT '',
    status                       text        NOT NULL DEFAULT 'draft'
                                             CHECK (status IN ('draft', 'published', 'archived')),
    requires_sequential_progress boolean     NOT NULL DEFAULT false,
    certificate_enabled          boolean     NOT NULL DEFAULT true,
    instructor_ids               text[]      NOT NULL DEFAULT '{}',
    revision                     bigint      NOT NULL DEFAULT 1,
    created_at                   timestamptz NOT NULL,
    updated_at                   timestamptz NOT NULL,
    last_event_id                uuid        NOT NULL,
    last_event_at                timestamptz NOT NULL
);

-- Lesson ids are global (progress refers to lessons by id); `position` is the 1-based
-- "order" within the course, kept contiguous. The unique check is deferred so that a
-- reorder can rewrite every position in one statement.
CREATE TABLE lessons (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    course_id        bigint  NOT NULL REFERENCES courses (id),
    title            text    NOT NULL,
    position         integer NOT NULL CHECK (position >= 1),
    is_required      boolean NOT NULL DEFAULT true,
    duration_seconds integer CHECK (duration_seconds >= 0),
    kind             text    NOT NULL DEFAULT 'video',
    CONSTRAINT lessons_course_position UNIQUE (course_id, position) DEFERRABLE INITIALLY DEFERRED
);

-- One row per (learner, course), whatever happens: unenrolling keeps the row and its
-- progress, and enrolling again resumes it.
CREATE TABLE enrollments (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id               text        NOT NULL,
    course_id             bigint      NOT NULL REFERENCES courses (id),
    status                text        NOT NULL CHECK (status IN ('active', 'completed', 'unenrolled')),
    revision              bigint      NOT NULL DEFAULT 1,
    enrolled_at           timestamptz NOT NULL,
    unenrolled_at         timestamptz,
    -- The learner's profile from the token claims, refreshed on every (re-)enrollment.
    username              text        NOT NULL DEFAULT '',
    display_name          text        NOT NULL DEFAULT '',
    email                 text        NOT NULL DEFAULT '',
    avatar                text,
    -- Progress as reported by the progress service's events. progress_at/progress_seq
    -- are the ordering key of the event that set it (its own timestamp, then its
    -- occurred_at): an older event never overwrites a newer one.
    progress_percentage   integer     NOT NULL DEFAULT 0,
    completed_lessons     integer     NOT NULL DEFAULT 0,
    total_lessons         integer     NOT NULL DEFAULT 0,
    progress_at           timestamptz,
    progress_seq          timestamptz,
    last_accessed         timestamptz,
    completed_at          timestamptz,
    certificate_id        text,
    certificate_url       text,
    certificate_issued_at timestamptz,
    last_event_id         uuid        NOT NULL,
    last_event_at         timestamptz NOT NULL,
    CONSTRAINT enrollments_learner_course UNIQUE (user_id, course_id)
);

-- The students list pages and sorts within one course by each of these.
CREATE INDEX enrollments_course_enrolled ON enrollments (course_id, enrolled_at, id);
CREATE INDEX enrollments_course_accessed ON enrollments (course_id, last_accessed, id);
CREATE INDEX enrollments_course_progress ON enrollments (course_id, progress_percentage, id);
CREATE INDEX enrollments_course_name ON enrollments (course_id, lower(display_name), id);
CREATE INDEX enrollments_user ON enrollments (user_id, status);
