-- Enrollment records the erasure requests (shared migration 004's table): one per learner,
-- so that a second request finds the first and changes nothing.
CREATE UNIQUE INDEX erasures_one_per_subject ON erasures (subject);
