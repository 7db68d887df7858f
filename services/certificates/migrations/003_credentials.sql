-- Signed Open Badges 3.0 credentials (docs/certificates.md, "Signed credentials").

-- Each certificate has one entry on a revocation status list, reserved with its identity
-- (the entry is inside the signed credential). The index is drawn at random among the free
-- ones, so that it says nothing of when or in what order certificates were issued; a list
-- is filled to half at most (lists hold 131,072 entries), then the next list is used.
ALTER TABLE certificate_identities
    ADD COLUMN status_list  integer,
    ADD COLUMN status_index integer,
    ADD CONSTRAINT certificate_identities_status UNIQUE (status_list, status_index);

-- When the credential stops being valid (the course's validity period; NULL: never), and
-- the certificate's revocation, if any (the reason is shown to verifiers).
-- status_changed_at is the time of the latest revocation or reinstatement: the
-- certificate-revoked event carries the same instant, and consumers order changes by it.
ALTER TABLE certificates
    ADD COLUMN valid_until       timestamptz,
    ADD COLUMN revoked_at        timestamptz,
    ADD COLUMN revocation_reason text,
    ADD COLUMN status_changed_at timestamptz;

-- The signed credential of each rendering: a regenerated certificate gets a new one, and
-- the earlier credentials are superseded (never revoked). NULL for earlier renderings.
ALTER TABLE certificate_files ADD COLUMN credential jsonb;

-- Every revocation and reinstatement, who did it and why.
CREATE TABLE certificate_status_changes (
    id             bigserial   PRIMARY KEY,
    certificate_id text        NOT NULL REFERENCES certificates (certificate_id),
    status         text        NOT NULL CHECK (status IN ('revoked', 'reinstated')),
    reason         text        NOT NULL,
    changed_by     text        NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX certificate_status_changes_certificate ON certificate_status_changes (certificate_id);

-- The signed status list credential of each list. ``revision`` grows with every change of
-- one of its entries (in the change's transaction); the credential is re-signed when it was
-- signed for an older revision (``signed_revision``), so a list is never served stale.
CREATE TABLE status_lists (
    status_list     integer     PRIMARY KEY,
    revision        bigint      NOT NULL DEFAULT 0,
    credential      jsonb,
    signed_revision bigint,
    signed_at       timestamptz
);
