"""The PDF itself: real WeasyPrint output read back with pypdf."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pypdf
import pytest

from services.certificates.rendering import (
    FONTS,
    RenderJob,
    TemplateError,
    _weasy,
    render_certificate,
    validate_template,
)


def job(name: str, template: str | None = None) -> RenderJob:
    code = "abcdefghijklmnopqrstuvwx"
    return RenderJob(
        certificate_id="CERT-2025-042", verification_code=code,
        verification_url=f"https://learn.example.com/certificates/verify/{code}",
        student_name=name, course_title="Introduction to Web Development",
        issued_at=datetime(2025, 10, 27, 12, 0, tzinfo=UTC), completed_at=datetime(2025, 10, 27, 11, 0, tzinfo=UTC),
        signatory_name="Ada Lovelace", signatory_title="Head of Learning", platform_name="Lessonstream",
        template_source=template,
    )


def read(pdf: bytes) -> tuple[pypdf.PdfReader, str]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def fonts(reader: pypdf.PdfReader) -> set[str]:
    resources: Any = reader.pages[0]["/Resources"]["/Font"]  # type: ignore[index]
    return {str(resources[k].get_object()["/BaseFont"]).split("+", 1)[-1] for k in resources}


def test_default_certificate_is_one_a4_landscape_page_with_everything_printed() -> None:
    reader, text = read(render_certificate(job("José Müller-Łukasiewicz")))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (842, 595)  # A4 landscape, points
    for expected in ("José Müller-Łukasiewicz", "Introduction to Web Development", "CERT-2025-042",
                     "https://learn.example.com/certificates/verify/abcdefghijklmnopqrstuvwx",
                     "Issued on 27 October 2025", "Ada Lovelace", "Head of Learning"):
        assert expected in text
    # The QR code is drawn as an image or vector object, not as text; the page has more than text.
    assert "Noto-Serif-Bold" in fonts(reader)


@pytest.mark.parametrize(
    ("name", "words", "font"),
    [
        ("李小龍", ["李小龍"], "Noto-Sans-CJK"),
        ("山田 太郎", ["山田", "太郎"], "Noto-Sans-CJK"),
        ("محمد عبد الله", ["محمد", "عبد"], "Noto-Naskh-Arabic"),
        ("Ζωή Παπαδοπούλου", ["Ζωή", "Παπαδοπούλου"], "Noto-Serif-Bold"),
        ("Анна Каренина", ["Анна", "Каренина"], "Noto-Serif-Bold"),
        ("Grace 🎓", ["Grace", "🎓"], "Noto-Color-Emoji"),
    ],
)
def test_names_in_any_script_render_with_the_shipped_fonts(name: str, words: list[str], font: str) -> None:
    reader, text = read(render_certificate(job(name)))
    for word in words:
        assert word in text
    used = fonts(reader)
    assert any(f.startswith(font) for f in used), used
    # Every font in the PDF is one the project ships: nothing came from the machine.
    assert all(f.startswith("Noto-") for f in used), used


def test_a_course_template_replaces_the_default() -> None:
    template = (
        "<html><body style='font-family: {{ font_stack | safe }}'><h1>Diploma</h1>"
        "<p>{{ student_name }} / {{ course_title }} / {{ certificate_id }}</p>"
        "<img src='{{ qr_code }}'><p>{{ verification_url }}</p></body></html>"
    )
    validate_template(template)
    _, text = read(render_certificate(job("Zoë <script>", template)))
    assert "Diploma" in text
    assert "Zoë <script> / Introduction to Web Development / CERT-2025-042" in text
    assert "Certificate of Completion" not in text


@pytest.mark.parametrize(
    "template",
    [
        "{{ student_name ",  # syntax error
        "{{ no_such_variable }}",  # unknown variable
        "{{ ''.__class__.__mro__ }}",  # sandbox
    ],
)
def test_broken_or_unsafe_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        validate_template(template)


def test_templates_can_read_the_shipped_fonts_and_nothing_else_on_disk_or_network() -> None:
    _, _, fetcher = _weasy()
    font = fetcher.fetch((FONTS / "NotoSerif-Regular.ttf").as_uri())
    assert font is not None
    for url in ("file:///etc/passwd", (FONTS / ".." / "rendering.py").as_uri(), "http://127.0.0.1:9/x.png"):
        with pytest.raises(ValueError):
            fetcher.fetch(url)


def test_render_processes_do_not_outlive_a_killed_worker(tmp_path: Any) -> None:
    """A worker killed outright (SIGKILL, OOM) takes its render pool with it: no orphans."""
    import signal
    import subprocess
    import sys

    import psutil

    script = (
        "import asyncio, sys\n"
        "from services.certificates.rendering import Renderer\n"
        "async def main():\n"
        "    renderer = Renderer(2)\n"
        "    await renderer.start()\n"
        "    print('started', flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"started"
        children = psutil.Process(worker.pid).children(recursive=True)
        renderers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(renderers) == 2
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        _, alive = psutil.wait_procs(renderers, timeout=15)
        assert alive == [], "render processes outlived their worker"
    finally:
        if worker.poll() is None:
            worker.kill()
        for child in psutil.Process().children(recursive=True):
            if "spawn_main" in " ".join(child.cmdline()):
                child.kill()
