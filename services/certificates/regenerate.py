"""Re-render a course's certificates after a template change (same ids and codes, new PDFs).

    python -m services.certificates.regenerate --course 10 [--course 11]

Queues the work in the certificates database (outbox); the running workers render it.
Uses the service's settings (``DATABASE_URL``).

Why a second command line beside ``lessonstream regenerate-certificates``: the service's
container image (the ``Dockerfile`` built with ``SERVICE=certificates``) holds only ``shared/`` and
``services/certificates/``, not the ``lessonstream`` package, so this module is how an
operator queues a regeneration from a deployed certificates container. The ``lessonstream``
command serves the local stack (it finds the database by prefix, embedded or given). Both
call the same use case, ``usecases.regenerate_courses``, and print the same lines.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.certificates.settings import CertificatesSettings
from services.certificates.usecases import regenerate_courses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.certificates.regenerate", description="Re-render a course's certificates"
    )
    parser.add_argument("--course", type=int, action="append", required=True, help="course id (repeatable)")
    args = parser.parse_args(argv)
    for queued in asyncio.run(regenerate_courses(CertificatesSettings(), args.course)):
        sys.stdout.write(queued.summary() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
