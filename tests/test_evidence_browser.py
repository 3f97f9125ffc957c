"""The evidence page in a real browser (marker `browser`): Debian's headless Chromium driven by chromedriver
(devtools/browser.py; installed by scripts/setup_browser.sh). Rendered pages are served over loopback HTTP
with the exact Content-Security-Policy header, so a CSP violation shows up as a console error; then the same
checks run against a real `dfguard serve` process, on a job's page opened through its signed link.

`assert_evidence_page_ok` is the whole check, reusable against any loopback URL.

`DFG_WRITE_DOCS_SCREENSHOT=1` also writes the real page's screenshot to docs/evidence_page.png (the README
shows it): a swap of the public-domain Grace Hopper photo onto the public-domain astronaut photo."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from devtools.browser import PageReport, StaticPage, check_page, chromium_available, screenshot, serve_pages
from service.evidence.page import PLOT_ID, content_security_policy, render_html
from tests.test_evidence_page import sample_evidence

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """The set-up installs Chromium (scripts/setup_browser.sh): its absence is a broken set-up, a failure."""
    missing = chromium_available()
    if missing is not None:
        pytest.fail(f"the browser tests need Chromium: {missing} (run scripts/setup_browser.sh)")


WIDTHS = (390, 1280)


def assert_evidence_page_ok(
    url: str, *, images: int | None = None, widths: Sequence[int] = WIDTHS
) -> PageReport:
    """Every picture decoded, the score plot present, no console error (CSP violations included), no
    horizontal scroll at any of `widths`; with `images`, exactly that many pictures."""
    report = check_page(url, widths, plot_selector=f"#{PLOT_ID}")
    assert not report.problems(), "\n".join(report.problems())
    assert report.images > 0 and report.images_decoded == report.images
    if images is not None:
        assert report.images == images
    assert [w.width for w in report.widths] == list(widths)
    return report


def _page(overlays: str, **fields: object) -> tuple[StaticPage, int]:
    doc, pics = sample_evidence(overlays, **fields)
    nonce = secrets.token_urlsafe(18)
    # No refresh while the browser looks at a pending page: a reload mid-check would race the checks.
    body = render_html(doc, pics, nonce=nonce, refresh_seconds=None).encode()
    headers = {
        "Content-Security-Policy": content_security_policy(nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return StaticPage(body=body, headers=headers), len(pics.frames) + len(pics.crops) + len(pics.overlays)


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, dict[str, int]]]:
    long_id = "v" * 300  # one unbreakable 300-character id: must wrap, not scroll
    pages = {
        "/ready": _page("ready"),
        "/pending": _page("pending"),
        "/hostile": _page(
            "failed",
            subject_id=long_id + '"><img src=x onerror=alert(1)>',
            reasons=["<script>alert(1)</script>", "<style>body{width:5000px}</style>"],
            tenant="<b>acme</b>" + "t" * 200,
            shown_for="<script>document.title=1</script>",
        ),
    }
    with serve_pages({path: page for path, (page, _) in pages.items()}) as base:
        yield base, {path: n for path, (_, n) in pages.items()}


@pytest.mark.parametrize("path", ["/ready", "/pending", "/hostile"])
def test_evidence_page_in_chromium(site: tuple[str, dict[str, int]], path: str) -> None:
    base, images = site
    assert_evidence_page_ok(base + path, images=images[path])


def test_a_csp_violation_is_caught(site: tuple[str, dict[str, int]]) -> None:
    """The check itself works: an inline script and a style without the nonce are refused by the browser and
    reported, a broken picture is reported, and so is a page wider than the phone."""
    nonce = secrets.token_urlsafe(18)
    body = (
        b"<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        b"<script>document.title='ran'</script><div style='width:2000px'>wide</div>"
        b"<img src='data:image/jpeg;base64,AAAA' alt='broken'></body></html>"
    )
    page = StaticPage(body=body, headers={"Content-Security-Policy": content_security_policy(nonce)})
    with serve_pages({"/bad": page}) as base:
        report = check_page(base + "/bad", (390,))
    problems = "\n".join(report.problems())
    assert "Content Security Policy" in problems and "script" in problems
    assert "image not decoded" in problems
    assert "the plot is missing" in problems
    # The style attribute was refused too, so the div is not wide: the CSP holds the layout as well.
    assert not report.widths[0].scrolls_horizontally


def test_a_wide_page_is_caught() -> None:
    body = (
        b"<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body><pre>"
        + b"x" * 100  # about 800 px of monospace
        + b"</pre>"
    )
    with serve_pages({"/wide": StaticPage(body=body)}) as base:
        report = check_page(base + "/wide", (390, 1280))
    assert [w.scrolls_horizontally for w in report.widths] == [True, False]
    assert any("pre" in o for o in report.widths[0].overflowing)


def test_screenshot_of_the_whole_page(site: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    base, _ = site
    png = screenshot(base + "/ready", tmp_path / "evidence.png", width=1280)
    img = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    h, w = img.shape[:2]
    assert w == 1280 and h > 900  # the whole page, taller than one screen
    assert float(img.std()) > 20


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_page("http://example.com/")


def test_a_real_gateway_job_page_in_chromium(tmp_path: Path) -> None:
    """A job scored by a real `dfguard serve`, its page opened by a reviewer's signed link (no API key)."""
    import os
    import shutil
    import time
    from urllib.parse import urlsplit

    import httpx

    from devtools import media_factory as mf
    from devtools.ops_tools import dfguard_serve
    from devtools.servers import wait_until
    from service.evidence.links import LinkGrant, signed_url

    clip = mf.make_sample_clip(
        tmp_path / "swap.mp4", seconds=4.0, photo="astronaut_swapped", face_height_frac=0.95
    )
    secret = secrets.token_urlsafe(24)
    settings = {
        "DFG_API_KEYS": '{"key-a": "acme"}',
        "DFG_EVIDENCE_FOR": "all",
        "DFG_EVIDENCE_LINK_SECRET": secret,
        "DFG_WORKERS": "1",
    }
    with dfguard_serve(tmp_path, **settings) as url:
        auth = {"authorization": "Bearer key-a"}
        with open(clip, "rb") as fh:
            resp = httpx.post(f"{url}/v1/jobs", files={"file": (clip.name, fh)}, headers=auth, timeout=60)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        page = f"{url}/v1/jobs/{job_id}/evidence"

        def overlays() -> str | None:
            got = httpx.get(page, params={"format": "json"}, headers=auth)
            return str(got.json()["overlays"]) if got.status_code == 200 else None

        wait_until(lambda: overlays() == "ready", 180, what="the job's evidence with its overlays")
        doc = httpx.get(page, params={"format": "json"}, headers=auth).json()
        link = signed_url(url, secret, LinkGrant("job", job_id, "acme", int(time.time()) + 600))
        assert urlsplit(link).path == f"/v1/jobs/{job_id}/evidence"
        images = len(doc["frames"]) + 2 * len(doc["sensitivity"])
        assert_evidence_page_ok(link, images=images)
        shot = screenshot(link, tmp_path / "evidence_page.png", width=1280)
    picture = cv2.imdecode(np.frombuffer(shot.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[1] == 1280
    if os.environ.get("DFG_WRITE_DOCS_SCREENSHOT") == "1":
        shutil.copy(shot, Path(__file__).resolve().parent.parent / "docs" / "evidence_page.png")
