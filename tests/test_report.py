"""The HTML report: self-contained, escaped, and checked in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ropd.store.report import SCRIPT, STYLE, write_report
from tests.conftest import browse
from tests.test_store_fixtures import RUN_ID, XSS, good_rubric, many_prompts, write_prompts, write_round, write_run


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(write_run(tmp_path_factory.mktemp("runs")))


class Collect(HTMLParser):
    """Start tags with their attributes, and the text inside <script>/<style>/<title>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw: dict[str, list[str]] = {"script": [], "style": [], "title": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in self.raw else None

    def handle_data(self, data: str) -> None:
        if self._in:
            self.raw[self._in].append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def parse(path: Path) -> Collect:
    c = Collect()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def sha256_b64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_report_is_self_contained_and_escaped(report: Path) -> None:
    page = parse(report)
    text = report.read_text(encoding="utf-8")
    names = [t for t, _ in page.tags]
    assert names.count("script") == 1 and page.raw["script"] == [SCRIPT] and page.raw["style"] == [STYLE]
    assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]  # no inline handlers
    assert not [attrs for t, attrs in page.tags if "src" in attrs or (t == "link")]  # nothing loaded from outside
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src 'sha256-{sha256_b64(SCRIPT)}'" in csp and f"style-src 'sha256-{sha256_b64(STYLE)}'" in csp
    assert "default-src 'none'" in csp
    assert XSS not in text and "&lt;script&gt;document.title=&#x27;XSS-SCRIPT&#x27;&lt;/script&gt;" in text
    prompts = [a for t, a in page.tags if t == "details" and a.get("class") == "prompt"]
    assert len(prompts) == 4 and {a["data-flagged"] for a in prompts} == {"0", "1"}
    assert names.count("svg") == 4 and names.count("polyline") >= 6
    assert "paper 0.90" in text and "too_many_heavy" in text and "rubric failed: rubric/schema" in text
    assert write_report(report.parent).read_text(encoding="utf-8") == text  # a pure function of the run


def png_is_not_blank(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decoded image data): a blank page has a handful."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat, pos = b"", 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.mark.timeout(900)  # the first test to need chromium may wait for apt-get
def test_screenshot_renders(chromium: Path, report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    browse(chromium, tmp_path, f"--screenshot={shot}", report.as_uri())
    width, height, distinct = png_is_not_blank(shot.read_bytes())
    assert (width, height) == (1200, 900) and distinct > 50


@pytest.mark.timeout(900)  # the first test to need chromium may wait for apt-get
def test_payload_does_not_execute_and_filter_runs(chromium: Path, report: Path, tmp_path: Path) -> None:
    dom = browse(chromium, tmp_path, "--dump-dom", report.as_uri())
    assert f"<title>ropd report — {RUN_ID}</title>" in dom and "XSS-SCRIPT</title>" not in dom
    assert "XSS-IMG</title>" not in dom
    assert "&lt;script&gt;document.title='XSS-SCRIPT'&lt;/script&gt;&lt;img src=x onerror=" in dom
    assert '<span id="count" class="muted">4 of 4 prompts</span>' in dom  # our script did run under the CSP
    filtered = browse(chromium, tmp_path, "--dump-dom", report.as_uri() + "#q=pencil")
    assert "1 of 4 prompts" in filtered and filtered.count('class="prompt"') == 4
    assert len(re.findall(r'<details class="prompt"[^>]* hidden', filtered)) == 3


@pytest.mark.timeout(900)  # the first test to need chromium may wait for apt-get
def test_a_few_hundred_prompts(chromium: Path, tmp_path: Path) -> None:
    run = tmp_path / "big"
    prompts = many_prompts(300)
    write_prompts(run, prompts)
    write_round(run, 0, {p[0]: good_rubric() for p in prompts}, {}, prompts)
    t0 = time.monotonic()
    path = write_report(run)
    elapsed = time.monotonic() - t0
    assert elapsed < 30 and path.stat().st_size < 5_000_000
    dom = browse(chromium, tmp_path, "--dump-dom", path.as_uri() + "#q=q0042")
    assert "1 of 300 prompts" in dom
