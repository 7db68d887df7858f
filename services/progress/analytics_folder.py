"""Where ``tracking.py`` still imports the folder from; it is ``analytics.folder`` now.
Goes once that import names ``services.progress.analytics.folder``."""

from services.progress.analytics.folder import AnalyticsFolder

__all__ = ["AnalyticsFolder"]
