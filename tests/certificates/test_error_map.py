"""Every refusal the certificates domain states has its HTTP answer in ``api.ERRORS``."""

from __future__ import annotations

from services.certificates import api, domain
from shared.domain import DomainError


def test_every_domain_refusal_is_answered() -> None:
    refusals = [
        kind for kind in vars(domain).values()
        if isinstance(kind, type) and issubclass(kind, DomainError) and kind.__module__ == domain.__name__
    ]
    assert refusals, "services/certificates/domain.py states no refusals"
    missing = [kind.__name__ for kind in refusals if kind not in api.ERRORS]
    assert not missing, f"not in api.ERRORS: {', '.join(missing)}"
