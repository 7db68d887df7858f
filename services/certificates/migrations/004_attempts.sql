-- Attempts (recertification): a learner whose course was reset completes it again and gets
-- another certificate. Exactly one certificate per (learner, course, attempt); earlier ones
-- stay valid unless revoked. Everything keyed by (learner, course) is keyed by the attempt
-- too; what existed before is attempt 1.

ALTER TABLE certificate_identities ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE certificate_identities DROP CONSTRAINT certificate_identities_pkey,
    ADD PRIMARY KEY (user_id, course_id, attempt);

ALTER TABLE certificates ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE certificates DROP CONSTRAINT certificates_user_id_course_id_key,
    ADD CONSTRAINT certificates_user_course_attempt UNIQUE (user_id, course_id, attempt);

ALTER TABLE certificate_requests ADD COLUMN attempt integer NOT NULL DEFAULT 1;
ALTER TABLE certificate_requests DROP CONSTRAINT certificate_requests_pkey,
    ADD PRIMARY KEY (user_id, course_id, attempt);
