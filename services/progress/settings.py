"""Settings of the progress service, read from environment variables (matched to the
field names case-insensitively: ``HEARTBEAT_FLUSH_INTERVAL_S`` sets ``heartbeat_flush_interval_s``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import ServiceSettings


class ProgressSettings(ServiceSettings):
    DEFAULT_DATABASE = "lessonstream_progress"
    service_name: str = "progress"
    # Heartbeat positions are written in one batch at least this often; a crash can lose
    # at most this much of them (never a completion).
    heartbeat_flush_interval_s: float = Field(0.5, gt=0, le=10)
    # How long this process trusts a catalog entry or an active enrollment it has read.
    replica_cache_ttl_s: float = Field(5.0, ge=0)
    # How often pending analytics deltas are folded into the cohort histograms. Reports
    # are exact either way; folding keeps them fast.
    analytics_fold_interval_s: float = Field(1.0, gt=0, le=300)
    # Course-completed decisions deferred while the enrollment service was unreachable are
    # re-checked this often; a failing one waits this long times 2**attempts (at most 60 s).
    completion_recheck_interval_s: float = Field(1.0, gt=0, le=60)
    # Recalculation after a change of a course's required lessons: learners per batch (one
    # transaction and one progress-recalculated event each), how often due jobs are looked
    # for, and the lease a process holds on a job (renewed by every batch; a dead process's
    # job is taken over once it ends).
    recalculation_batch_size: int = Field(500, ge=1, le=5000)
    recalculation_interval_s: float = Field(1.0, gt=0, le=60)
    recalculation_lease_s: float = Field(30.0, gt=0, le=600)
    # A viewing session ends once no heartbeat of it has arrived for this long (or when the
    # learner plays another lesson); its video-session-ended event is published then. The
    # closing loop looks this often (a quarter of it, between 0.2 s and 10 s).
    video_session_idle_s: float = Field(120.0, gt=0, le=3600)

    @property
    def video_session_check_interval_s(self) -> float:
        return min(max(self.video_session_idle_s / 4, 0.2), 10.0)

    @property
    def video_session_flusher_expiry_s(self) -> float:
        """A process whose flushes stopped this long ago (by the database clock) is taken for
        gone and holds no session open: twice the idle time, at least a minute."""
        return max(2 * self.video_session_idle_s, 60.0)

    @model_validator(mode="after")
    def _sessions_outlast_a_flush(self) -> ProgressSettings:
        # Heartbeats wait in memory up to a flush interval: a shorter idle time would end
        # sessions whose next heartbeat is already here (early).
        if self.video_session_idle_s <= 2 * self.heartbeat_flush_interval_s:
            raise ValueError("VIDEO_SESSION_IDLE_S must be more than twice HEARTBEAT_FLUSH_INTERVAL_S")
        return self
