"""Progress analytics: a course's report (``api``, ``usecases``), its pure rules and
histogram arithmetic (``domain``), its SQL (``store``) and the background fold of the
cohort histograms (``folder``). Nothing is re-exported here, so that importing the pure
``domain`` imports nothing with I/O."""
