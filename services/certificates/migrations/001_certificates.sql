-- Per-year counter behind certificate ids such as CERT-2025-001 (no gaps: the row is
-- incremented in the same transaction that reserves the id).
CREATE TABLE certificate_numbers (
    year        integer PRIMARY KEY,
    last_number integer NOT NULL
);

-- The id and verification code of a learner's certificate for a course, reserved before
-- the PDF is rendered (they are printed on it). Racing workers reserve the same row.
CREATE TABLE certificate_identities (
    user_id           text        NOT NULL,
    course_id         integer     NOT NULL,
    certificate_id    text        NOT NULL UNIQUE,
    verification_code text        NOT NULL UNIQUE,
    issued_at         timestamptz NOT NULL,
    PRIMARY KEY (user_id, course_id)
);

-- Issued certificates: exactly one per (learner, course).
CREATE TABLE certificates (
    certificate_id    text        PRIMARY KEY REFERENCES certificate_identities (certificate_id),
    user_id           text        NOT NULL,
    course_id         integer     NOT NULL,
    verification_code text        NOT NULL UNIQUE,
    student_name      text        NOT NULL,
    student_email     text        NOT NULL,
    course_title      text        NOT NULL,
    completed_at      timestamptz NOT NULL,
    issued_at         timestamptz NOT NULL,
    source_event_id   uuid        NOT NULL,
    current_version   integer     NOT NULL DEFAULT 1,
    UNIQUE (user_id, course_id)
);
CREATE INDEX certificates_course ON certificates (course_id);

-- Every rendering of a certificate; regeneration adds a version and keeps the old ones.
CREATE TABLE certificate_files (
    certificate_id    text        NOT NULL REFERENCES certificates (certificate_id),
    version           integer     NOT NULL,
    pdf               bytea       NOT NULL,
    sha256            text        NOT NULL,
    template_revision integer     NOT NULL DEFAULT 0,
    regeneration_id   bigint,
    rendered_by       text        NOT NULL,
    rendered_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (certificate_id, version)
);
-- PDFs are compressed already: store them out of line without trying to compress again.
ALTER TABLE certificate_files ALTER COLUMN pdf SET STORAGE EXTERNAL;
CREATE INDEX certificate_files_regeneration ON certificate_files (regeneration_id)
    WHERE regeneration_id IS NOT NULL;

-- Completions the API handed to the workers because the event had not arrived yet.
CREATE TABLE certificate_requests (
    user_id      text        NOT NULL,
    course_id    integer     NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, course_id)
);

-- A course's own certificate template (NULL source: the default template).
CREATE TABLE course_templates (
    course_id  integer     PRIMARY KEY,
    source     text,
    revision   integer     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text        NOT NULL
);

CREATE TABLE regenerations (
    id           bigserial   PRIMARY KEY,
    course_id    integer     NOT NULL,
    total        integer     NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text        NOT NULL
);
