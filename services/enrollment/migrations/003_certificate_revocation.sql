-- The learner's certificate as certificate-revoked reports it: revoked_at and the reason
-- while it is revoked, both null again once reinstated. certificate_status_changed_at is
-- the changed_at of the event that set them: an older event never overwrites a newer one.
ALTER TABLE enrollments
    ADD COLUMN certificate_revoked_at         timestamptz,
    ADD COLUMN certificate_revocation_reason  text,
    ADD COLUMN certificate_status_changed_at  timestamptz;
