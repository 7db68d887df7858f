"""Re-render a course's certificates after a template change (same ids and codes, new PDFs).

    python -m services.certificates.regenerate --course 10 [--course 11]

Queues the work in the certificates database (outbox); the running workers render it.
Uses the service's settings (``DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.certificates import store
from services.certificates.api import regeneration_event
from services.certificates.settings import CertificatesSettings
from shared import db


async def regenerate(settings: CertificatesSettings, course_ids: list[int]) -> list[tuple[int, int, int]]:
    await db.migrate_service(settings.database_url, "certificates", Path(__file__).parent / "migrations")
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        done = []
        async with pool.acquire() as conn:
            for course_id in course_ids:
                regeneration_id, count = await store.request_regeneration(conn, course_id, "cli", regeneration_event)
                done.append((course_id, regeneration_id, count))
        return done
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.certificates.regenerate", description="Re-render a course's certificates"
    )
    parser.add_argument("--course", type=int, action="append", required=True, help="course id (repeatable)")
    args = parser.parse_args(argv)
    for course_id, regeneration_id, count in asyncio.run(regenerate(CertificatesSettings(), args.course)):
        sys.stdout.write(
            f"course {course_id}: regeneration {regeneration_id} queued for {count} certificates\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
