-- The coverage of a video lesson's duration that completes it (progress applies it):
-- a course's rule, and a lesson's own, which overrides it. Null: a course whose learners
-- complete lessons themselves; on a lesson, the course's rule. Carried on course-catalog.
ALTER TABLE courses ADD COLUMN video_completion_threshold double precision
    CHECK (video_completion_threshold > 0 AND video_completion_threshold <= 1);
ALTER TABLE lessons ADD COLUMN video_completion_threshold double precision
    CHECK (video_completion_threshold > 0 AND video_completion_threshold <= 1);
