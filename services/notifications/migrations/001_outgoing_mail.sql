-- The outgoing-mail queue: one row per (event, kind), written in the consumer's
-- transaction together with its inbox marker. A sender loop claims due rows, sends
-- them and records the outcome; retries never hold up the Kafka partition.
CREATE TABLE outgoing_mail (
    id               bigserial   PRIMARY KEY,
    event_id         uuid        NOT NULL,
    kind             text        NOT NULL,
    user_id          text        NOT NULL,
    course_id        integer     NOT NULL,
    recipient        text        NOT NULL,
    message_id       text        NOT NULL,
    -- The event as consumed: everything the mail is rendered from.
    event            jsonb       NOT NULL,
    -- The source message, for the dead letter if the mail cannot be delivered.
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    consumer_group   text        NOT NULL,
    message_key      text,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'expired', 'skipped')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_error       text,
    smtp_response    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (event_id, kind)
);

CREATE INDEX outgoing_mail_due ON outgoing_mail (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outgoing_mail_leased ON outgoing_mail (lease_until) WHERE status = 'sending';
CREATE INDEX outgoing_mail_learner ON outgoing_mail (user_id, course_id);
CREATE INDEX outgoing_mail_created ON outgoing_mail (created_at DESC, id DESC);

-- The sent-notification log: every attempt, written as "sending" before the SMTP
-- conversation starts and updated with its outcome after it.
CREATE TABLE mail_attempts (
    id          bigserial   PRIMARY KEY,
    mail_id     bigint      NOT NULL REFERENCES outgoing_mail (id),
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text        NOT NULL
        CHECK (outcome IN ('sending', 'sent', 'temporary_failure', 'permanent_failure', 'interrupted')),
    smtp_code   integer,
    detail      text,
    UNIQUE (mail_id, attempt)
);
