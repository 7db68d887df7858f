-- Webhook endpoints registered by admins, and the generic delivery queue that sends them
-- signed messages (and, later, other destination kinds: see docs/notifications.md).
CREATE TABLE webhook_endpoints (
    id              bigserial   PRIMARY KEY,
    url             text        NOT NULL,
    event_types     text[]      NOT NULL,
    description     text        NOT NULL DEFAULT '',
    owner_email     text        NOT NULL,
    created_by      text        NOT NULL,
    -- The signing key, base64 (the `whsec_` form without its prefix). During a rotation the
    -- previous key also signs until previous_secret_until, so receivers can switch over.
    secret                 text        NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    enabled         boolean     NOT NULL DEFAULT true,
    disabled_at     timestamptz,
    disabled_reason text,
    -- The first failed attempt since the last success (null: not failing).
    failing_since   timestamptz,
    last_success_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints USING gin (event_types) WHERE enabled;

-- One row per (destination, message): queued in the consumer's transaction (or by a replay),
-- claimed by the delivery loop under a lease, retried on the schedule until delivered or
-- failed. destination_kind says which sender module handles it ('webhook': destination_id
-- is the endpoint); message_id is the receiver's idempotency key (the webhook-id), the same
-- on every retry and replay.
CREATE TABLE deliveries (
    id               bigserial   PRIMARY KEY,
    destination_kind text        NOT NULL,
    destination_id   bigint      NOT NULL DEFAULT 0,
    message_id       text        NOT NULL,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    -- Exactly the bytes sent (JSON text): every retry and replay sends the same body.
    body             text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'held')),
    attempts         integer     NOT NULL DEFAULT 0,  -- all attempts, numbering the log
    tries            integer     NOT NULL DEFAULT 0,  -- attempts since queued or replayed: the schedule's step
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (destination_kind, destination_id, message_id)
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'sending';
CREATE INDEX deliveries_destination ON deliveries (destination_kind, destination_id, created_at DESC, id DESC);

-- Every attempt: written as 'sending' before the request goes out, finished with its outcome.
CREATE TABLE delivery_attempts (
    id               bigserial   PRIMARY KEY,
    delivery_id      bigint      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text        NOT NULL
        -- held: the destination was disabled when the attempt began; nothing was sent.
        CHECK (outcome IN ('sending', 'delivered', 'failed', 'interrupted', 'held')),
    status_code      integer,
    error            text,
    duration_ms      integer,
    response_excerpt text,
    UNIQUE (delivery_id, attempt)
);

-- The mail telling an endpoint's owner it was disabled is about no course.
ALTER TABLE outgoing_mail ALTER COLUMN course_id DROP NOT NULL;
