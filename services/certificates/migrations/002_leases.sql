-- A reservation belongs to the worker rendering it until lease_until; the worker renews the
-- lease while the render runs. A lease that ran out without a certificate means the worker
-- died: the API hands the completion over again and the next worker keeps the identity.
-- NULL (reservations made before leases existed) counts as run out.
ALTER TABLE certificate_identities
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN leased_by   text;

-- The certificate-issued event of each certificate, so that notifications can confirm that
-- very event (a copy under another event id is refused). NULL for earlier certificates.
ALTER TABLE certificates ADD COLUMN issued_event_id uuid;
