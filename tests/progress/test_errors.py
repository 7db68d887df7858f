"""Every refusal the progress domain states is answered by ``api.ERRORS``, never as a 500."""

from __future__ import annotations

import inspect

from services.progress import api, domain
from shared.domain import DomainError


def test_every_domain_error_of_progress_has_an_answer() -> None:
    kinds = [
        kind for _, kind in inspect.getmembers(domain, inspect.isclass)
        if issubclass(kind, DomainError) and kind.__module__ == domain.__name__
    ]
    assert kinds  # the domain states refusals: the check below is not vacuous
    unanswered = [kind.__name__ for kind in kinds if kind not in api.ERRORS]
    assert unanswered == []
