-- How long a certificate of the course stays valid after issue, in days; null: it never
-- expires. Carried on course-catalog, and by progress on course-completed to the workers.
ALTER TABLE courses ADD COLUMN certificate_validity_days integer
    CHECK (certificate_validity_days BETWEEN 1 AND 36500);
