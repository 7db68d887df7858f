-- Certificates and notifications confirm a course-completed event with progress before
-- they act on it (GET /internal/completions/{event_id}): look the stored event up by its id.
CREATE INDEX course_completions_event_id ON course_completions ((event ->> 'event_id'));
