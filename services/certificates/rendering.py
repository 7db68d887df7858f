"""Certificate PDFs: a Jinja2 HTML template rendered by WeasyPrint, in a process pool.

Rendering is CPU-bound, so it never runs on the event loop: ``Renderer`` sends each job to
a pool of processes (one per core by default) and awaits the result, which keeps the
Kafka consumer heartbeating while certificates are drawn. Each pool process loads the
shipped fonts once and reuses them for every certificate it renders.

Templates, including the per-course ones admins upload, run in Jinja2's sandbox, and
WeasyPrint may only read the shipped fonts and ``data:`` URIs (no network, no other files).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from prometheus_client import Gauge, Histogram

from services.certificates import credentials
from shared.inbox import TransientError
from shared.process import die_with_parent

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
FONTS = HERE / "fonts"
DEFAULT_TEMPLATE = "certificate.html.j2"
# Every shipped family, in fallback order: a glyph missing from one is taken from the next.
FONT_STACK = (
    '"Noto Serif", "Noto Sans", "Noto Naskh Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari", '
    '"Noto Sans Thai", "Noto Sans CJK", "Noto Color Emoji"'
)
MAX_TEMPLATE_CHARS = 200_000

# Measured in the render process (the PDF and the signature), sent back with the result:
# the time a job waited for a free pool process is not in it, and shows as the queue.
RENDER_SECONDS = Histogram(
    "lessonstream_certificate_render_seconds",
    "Time to render and sign one certificate in a render process",
    ["service"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60),
)
RENDER_QUEUE = Gauge(
    "lessonstream_certificate_render_queue",
    "Certificates this process has handed to its render pool and not got back (rendering or waiting)",
    ["service"],
)


@dataclass(frozen=True)
class RenderJob:
    """Everything printed on a certificate; plain data, so it pickles to a pool process."""

    certificate_id: str
    verification_code: str
    verification_url: str
    student_name: str
    course_title: str
    issued_at: datetime
    completed_at: datetime
    signatory_name: str
    signatory_title: str
    platform_name: str
    template_source: str | None = None  # None: the default template
    credential_url: str = ""  # printed: where the signed credential of this rendering is
    # The unsigned credential, signed in the pool process beside the render (off the event
    # loop), with the one key that signs (its settings entry) under ``verification_method``.
    # Never passed to a template: course templates are written by admins.
    credential: dict[str, Any] | None = None
    signing_key: str = field(default="", repr=False)
    verification_method: str = ""


@dataclass(frozen=True)
class Rendered:
    pdf: bytes
    credential: dict[str, Any] | None  # signed, when the job carried one


class TemplateError(ValueError):
    """A course template that does not compile or render."""


def default_template_source() -> str:
    return (TEMPLATES / DEFAULT_TEMPLATE).read_text()


@functools.lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


@functools.lru_cache(maxsize=64)
def _compiled(source: str | None) -> jinja2.Template:
    env = _environment()
    return env.get_template(DEFAULT_TEMPLATE) if source is None else env.from_string(source)


def validate_template(source: str) -> None:
    """Compile a course template and render it with sample data; raises ``TemplateError``."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"template is longer than {MAX_TEMPLATE_CHARS} characters")
    sample = RenderJob(
        certificate_id="CERT-2025-001", verification_code="a" * 24,
        verification_url="https://example.com/certificates/verify/" + "a" * 24,
        student_name="Sample Learner", course_title="Sample Course",
        issued_at=datetime(2025, 1, 1), completed_at=datetime(2025, 1, 1),
        signatory_name="Signatory", signatory_title="Title", platform_name="Platform",
        template_source=source,
    )
    try:
        render_html(sample, qr_data_uri="data:,")
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}") from exc


def render_html(job: RenderJob, qr_data_uri: str) -> str:
    context: dict[str, Any] = {
        **asdict(job),
        "issued_on": f"{job.issued_at:%d %B %Y}".lstrip("0"),
        "completed_on": f"{job.completed_at:%d %B %Y}".lstrip("0"),
        "qr_code": qr_data_uri,
        "font_stack": FONT_STACK,
    }
    for private in ("template_source", "credential", "signing_key", "verification_method"):
        context.pop(private)
    return _compiled(job.template_source).render(context)


@functools.lru_cache(maxsize=1)
def _weasy() -> tuple[Any, Any, Any]:
    """Per pool process: the font configuration and the fonts stylesheet, loaded once."""
    from urllib.parse import unquote, urlsplit

    from weasyprint import CSS
    from weasyprint.text.fonts import FontConfiguration
    from weasyprint.urls import URLFetcher

    fonts_dir = FONTS.resolve()

    class ShippedFilesOnly(URLFetcher):  # type: ignore[misc]
        """Only the shipped fonts and ``data:`` URIs: templates reach no network and no other file."""

        def fetch(self, url: str, headers: Any = None) -> Any:
            if url.startswith("file:"):
                path = Path(unquote(urlsplit(url).path)).resolve()
                if not path.is_relative_to(fonts_dir):
                    raise ValueError(f"certificate templates may not read {url}")
            return super().fetch(url, headers)

    fetcher = ShippedFilesOnly(allowed_protocols={"file", "data"})
    font_config = FontConfiguration()
    fonts_css = CSS(
        string=(TEMPLATES / "fonts.css").read_text(),
        base_url=FONTS.as_uri() + "/",
        font_config=font_config,
        url_fetcher=fetcher,
    )
    return font_config, fonts_css, fetcher


def render_certificate(job: RenderJob) -> bytes:
    """Render one certificate to PDF bytes (runs in a pool process)."""
    import segno
    from weasyprint import HTML

    font_config, fonts_css, fetcher = _weasy()
    qr = segno.make(job.verification_url, error="m").svg_data_uri(scale=4, border=0)
    html = render_html(job, qr)
    pdf: bytes = HTML(string=html, base_url=FONTS.as_uri() + "/", url_fetcher=fetcher).write_pdf(
        stylesheets=[fonts_css], font_config=font_config
    )
    return pdf


def render_and_sign(job: RenderJob) -> Rendered:
    """The PDF and the signed credential of one rendering (runs in a pool process): RDF
    canonicalisation is CPU work like the render, so it stays off the worker's event loop."""
    pdf = render_certificate(job)
    signed = None
    if job.credential is not None:
        [key] = credentials.parse_keys(job.signing_key)
        signed = credentials.sign(job.credential, key, job.verification_method, datetime.now(UTC))
    return Rendered(pdf, signed)


def timed_render_and_sign(job: RenderJob) -> tuple[Rendered, float]:
    """``render_and_sign`` with the time it took in the pool process (runs there)."""
    started = time.perf_counter()
    rendered = render_and_sign(job)
    return rendered, time.perf_counter() - started


def _warm_up() -> None:
    # Load WeasyPrint and the fonts before the first real job arrives.
    try:
        from weasyprint.text.ffi import harfbuzz_subset

        if not harfbuzz_subset:
            log.warning("libharfbuzz-subset is missing: font subsetting falls back to fontTools (much slower)")
        _weasy()
        _warm_up_signing()
    except Exception:  # a broken font setup surfaces on the first real render instead
        log.exception("renderer warm-up failed")


def _warm_up_signing() -> None:
    # The JSON-LD contexts are parsed and cached on the first canonicalisation.
    now = datetime.now(UTC)
    sample = credentials.build_credential(
        credential_id="urn:uuid:00000000-0000-0000-0000-000000000000", issuer_id="did:web:warm-up.invalid",
        issuer_name="warm-up", issuer_url=None, valid_from=now, valid_until=None,
        recipient_email="warm-up@example.invalid", salt="warm-up", achievement_id="urn:warm-up",
        achievement_name="warm-up", achievement_description="warm-up", criteria_narrative="warm-up", status=None,
    )
    credentials.sign(sample, credentials.generate_key("warm-up"), "did:web:warm-up.invalid#warm-up", now)


def _start_render_process() -> None:
    # A worker killed outright (SIGKILL, OOM) takes its render processes with it.
    die_with_parent()
    _warm_up()


def sha256(pdf: bytes) -> str:
    return hashlib.sha256(pdf).hexdigest()


class Renderer:
    """The process pool; ``render`` awaits a PDF without blocking the event loop."""

    def __init__(self, processes: int, service: str = "certificates-worker") -> None:
        self.processes = max(1, processes)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._queue = RENDER_QUEUE.labels(service)
        self._seconds = RENDER_SECONDS.labels(service)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the parent runs an event loop and threads, which fork would copy badly.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_render_process,
            )
        return self._pool

    async def start(self) -> None:
        """Start every pool process now, so the first certificates are not slowed by start-up."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        await asyncio.gather(*(loop.run_in_executor(pool, _warm_up) for _ in range(self.processes)))

    async def render(self, job: RenderJob) -> Rendered:
        loop = asyncio.get_running_loop()
        self._queue.inc()
        try:
            rendered, took_s = await loop.run_in_executor(self._executor(), timed_render_and_sign, job)
        except concurrent.futures.process.BrokenProcessPool as exc:
            # A pool process died (killed, out of memory): start a new pool, retry the job later.
            self.close()
            raise TransientError("certificate renderer restarted") from exc
        finally:
            self._queue.dec()
        self._seconds.observe(took_s)
        return rendered

    def close(self, wait: bool = False) -> None:
        """Stop the pool; ``wait`` at shut-down, so no render process outlives the worker."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
