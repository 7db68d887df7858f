-- One row per (learner, lesson): the upsert key of the progress API.
CREATE TABLE lesson_progress (
    id                 bigserial        PRIMARY KEY,
    user_id            text             NOT NULL,
    course_id          bigint           NOT NULL,
    lesson_id          bigint           NOT NULL,
    completed          boolean          NOT NULL DEFAULT false,
    completed_at       timestamptz,
    video_progress     double precision NOT NULL DEFAULT 0,
    last_position      double precision NOT NULL DEFAULT 0,
    -- The client's timestamp of the heartbeat that set the position (when it sent one):
    -- a heartbeat stamped earlier never moves the position.
    position_at        timestamptz,
    time_spent_seconds double precision NOT NULL DEFAULT 0,
    created_at         timestamptz      NOT NULL DEFAULT now(),
    updated_at         timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT lesson_progress_user_lesson UNIQUE (user_id, lesson_id)
);
CREATE INDEX lesson_progress_user_course ON lesson_progress (user_id, course_id);
CREATE INDEX lesson_progress_course ON lesson_progress (course_id);

-- Replica of the course-catalog topic: the whole course as of its latest revision.
CREATE TABLE courses (
    course_id                    bigint      PRIMARY KEY,
    revision                     bigint      NOT NULL,
    entry                        jsonb       NOT NULL,  -- the CourseCatalogEntry event
    updated_at                   timestamptz NOT NULL DEFAULT now()
);

-- Replica of the enrollment-changed topic: the latest revision per (learner, course).
CREATE TABLE enrollments (
    user_id       text        NOT NULL,
    course_id     bigint      NOT NULL,
    enrollment_id bigint      NOT NULL,
    status        text        NOT NULL,
    revision      bigint      NOT NULL,
    enrolled_at   timestamptz NOT NULL,
    display_name  text        NOT NULL DEFAULT '',
    email         text        NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, course_id)
);

-- The course-completed event published for an enrollment: at most one per enrollment.
CREATE TABLE course_completions (
    user_id       text        NOT NULL,
    course_id     bigint      NOT NULL,
    enrollment_id bigint      NOT NULL,
    completed_at  timestamptz NOT NULL,
    event         jsonb       NOT NULL,  -- the very CourseCompleted event, same event_id
    PRIMARY KEY (user_id, course_id, enrollment_id)
);

-- From certificate-issued: where a learner's certificate for a course lives.
CREATE TABLE certificates (
    user_id         text        NOT NULL,
    course_id       bigint      NOT NULL,
    certificate_url text        NOT NULL,
    issued_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, course_id)
);
