"""Child processes that cannot outlive their parent."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Resolved at import, in the parent: between fork and exec a child only calls the function.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies, even by SIGKILL (Linux; elsewhere a no-op).

    Used as a ``preexec_fn`` for the local runtime's children and as the initializer of the
    certificate render pool, so neither leaves orphans behind.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
