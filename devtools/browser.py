"""A real headless browser for page checks: Debian's Chromium driven by its own chromedriver through selenium.

`scripts/setup_browser.sh` installs both (`chromium`, `chromium-driver`: one Debian source package, so the
driver always matches the browser; nothing is downloaded at test time, Selenium Manager is never asked). The
browser only talks to loopback: `check_page` refuses other hosts and every other host name resolves to
nothing, so a page that tried to load a third-party asset shows a console error instead of leaving the box.

    report = check_page("http://127.0.0.1:8000/v1/decisions/v1/evidence?sig=...")
    assert not report.problems(), report.problems()

Console errors come from the browser log at level SEVERE: failed loads, JavaScript errors and, what matters
most here, Content-Security-Policy violations (an inline style without the nonce, a script, a remote picture).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

__all__ = [
    "PageReport",
    "StaticPage",
    "WidthReport",
    "check_page",
    "chromium_available",
    "chromium_paths",
    "screenshot",
    "serve_pages",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT_S = 30.0

# What each width reports: the document's scroll width against the viewport, and the widest offenders (tag,
# id/class and right edge), so a failure says which element overflows rather than only that something does.
_LAYOUT_JS = """
const root = document.documentElement;
const limit = root.clientWidth + 0.5;
const flagged = [];
for (const el of document.querySelectorAll('body *')) {
  const r = el.getBoundingClientRect();
  const right = r.left + Math.max(r.width, el.scrollWidth);  // content overflowing the box counts too
  if (right > limit && r.width > 0) flagged.push([el, right]);
}
// The innermost offenders: an ancestor of an overflowing element overflows because of it.
const leaves = flagged.filter(([a]) => !flagged.some(([b]) => b !== a && a.contains(b)));
const wide = leaves.slice(0, 8).map(([el, right]) => {
  const cls = (el.getAttribute('class') || '').trim().split(/\\s+/).filter(Boolean).join('.');
  return el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (cls ? '.' + cls : '') + ' right='
    + Math.round(right);
});
return {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, wide: wide};
"""

# Every <img> must have decoded (naturalWidth > 0); every SVG <image> is loaded once more through an Image to
# learn the same (an SVG image has no naturalWidth). WebDriver scripts are not subject to the page's CSP.
_IMAGES_JS = """
const done = arguments[arguments.length - 1];
const short = (s) => (s || '').slice(0, 64);
const imgs = Array.from(document.images).map(
  (i) => ({src: short(i.currentSrc || i.src), ok: i.complete && i.naturalWidth > 0}));
const svgs = Array.from(document.querySelectorAll('svg image')).map((i) =>
  new Promise((resolve) => {
    const href = i.getAttribute('href') || i.getAttributeNS('http://www.w3.org/1999/xlink', 'href') || '';
    const probe = new Image();
    probe.onload = () => resolve({src: short(href), ok: probe.naturalWidth > 0});
    probe.onerror = () => resolve({src: short(href), ok: false});
    probe.src = new URL(href, document.baseURI).href;
  }));
Promise.all(svgs).then((svg) => done(imgs.concat(svg)));
"""

_PLOT_JS = """
const el = document.querySelector(arguments[0]);
if (!el) return false;
const r = el.getBoundingClientRect();
return r.width > 0 && r.height > 0 && el.querySelectorAll('line, polyline, circle, path').length > 0;
"""


@dataclass(frozen=True)
class WidthReport:
    """The layout at one viewport width: the page must fit (no horizontal scroll bar)."""

    width: int
    scroll_width: int
    client_width: int
    overflowing: list[str] = field(default_factory=list)

    @property
    def scrolls_horizontally(self) -> bool:
        return self.scroll_width > self.client_width


@dataclass(frozen=True)
class PageReport:
    """What a real browser saw of one page, at every width checked."""

    url: str
    images: int
    images_decoded: int
    broken_images: list[str]
    plot_present: bool
    console_errors: list[str]
    widths: list[WidthReport]

    def problems(self) -> list[str]:
        """Human-readable failures (empty: the page is fine)."""
        out = [f"image not decoded: {src}" for src in self.broken_images]
        if not self.plot_present:
            out.append("the plot is missing (or empty, or not rendered)")
        out += [f"console error: {line}" for line in self.console_errors]
        out += [
            f"scrolls horizontally at {w.width} px: scrollWidth {w.scroll_width} > clientWidth "
            f"{w.client_width}; widest: {', '.join(w.overflowing) or '?'}"
            for w in self.widths
            if w.scrolls_horizontally
        ]
        return out


def chromium_paths() -> tuple[str, str]:
    """The browser and driver binaries (`DFG_CHROMIUM` / `DFG_CHROMEDRIVER` override Debian's paths)."""
    return os.environ.get("DFG_CHROMIUM", CHROMIUM), os.environ.get("DFG_CHROMEDRIVER", CHROMEDRIVER)


def chromium_available() -> str | None:
    """None when a page check can run here, else why not (a test's skip reason)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for what, path in zip(("chromium", "chromedriver"), chromium_paths(), strict=True):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{what} is not installed at {path} (bash scripts/setup_browser.sh)"
    return None


def check_page(
    url: str,
    widths: Sequence[int] = (390, 1280),
    *,
    plot_selector: str = "#score-plot",
    height: int = 900,
) -> PageReport:
    """Load `url` once per width in headless Chromium and report images, plot, console errors and layout.

    Each width is a fresh load (layout, lazy decoding and console messages belong to that viewport); images
    and the plot are judged at every width (a picture that decodes at one width decodes at all of them, but a
    plot hidden by a media query would not), console errors are collected over all loads.
    """
    _require_loopback(url)
    broken: dict[str, None] = {}
    images = decoded = 0
    plot = True
    errors: list[str] = []
    layouts: list[WidthReport] = []
    with _driver() as driver:
        for width in widths:
            _viewport(driver, width, height)
            _load(driver, url)
            found: list[dict[str, Any]] = driver.execute_async_script(_IMAGES_JS)
            images = max(images, len(found))
            decoded = max(decoded, sum(1 for i in found if i["ok"]))
            broken.update({str(i["src"]): None for i in found if not i["ok"]})
            plot = plot and bool(driver.execute_script(_PLOT_JS, plot_selector))
            layout: dict[str, Any] = driver.execute_script(_LAYOUT_JS)
            layouts.append(
                WidthReport(
                    width=width,
                    scroll_width=int(layout["scrollWidth"]),
                    client_width=int(layout["clientWidth"]),
                    overflowing=[str(w) for w in layout["wide"]],
                )
            )
            errors += _console_errors(driver)
    return PageReport(
        url=url,
        images=images,
        images_decoded=decoded,
        broken_images=list(broken),
        plot_present=plot,
        console_errors=errors,
        widths=layouts,
    )


def screenshot(url: str, path: str | Path, width: int = 1280, *, max_height: int = 12_000) -> Path:
    """A PNG of the whole page at `width` CSS pixels: the viewport is grown to the document's height first."""
    _require_loopback(url)
    path = Path(path)
    with _driver() as driver:
        _viewport(driver, width, 900)
        _load(driver, url)
        full = int(driver.execute_script("return document.documentElement.scrollHeight"))
        _viewport(driver, width, max(200, min(full, max_height)))
        time.sleep(0.2)  # one frame for the relayout at the new height
        path.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(path)):
            raise RuntimeError(f"chromium could not take a screenshot of {url}")
    return path


# ------------------------------------------------------------------------------------------ a static server


@dataclass(frozen=True)
class StaticPage:
    """One response of `serve_pages`: body and headers (e.g. the Content-Security-Policy)."""

    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def serve_pages(pages: Mapping[str, StaticPage]) -> Iterator[str]:
    """Serve fixed pages on a free 127.0.0.1 port (a thread); yields the base URL. Unknown paths: 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages.get(urlsplit(self.path).path)
            if page is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", page.content_type)
            self.send_header("Content-Length", str(len(page.body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in page.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(page.body)

        def log_message(self, format: str, *args: Any) -> None:  # the base class's parameter name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="serve-pages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------- the driver


@contextlib.contextmanager
def _driver() -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    why = chromium_available()
    if why is not None:
        raise RuntimeError(why)
    binary, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers have a tiny /dev/shm
        "--hide-scrollbars",  # the same layout width with or without a vertical scroll bar
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        # Loopback only: every other host name resolves to nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root (CI, containers)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=os.devnull)
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        driver.set_script_timeout(PAGE_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()


def _viewport(driver: WebDriver, width: int, height: int) -> None:
    """An exact CSS viewport (window sizes include browser chrome and vary between headless modes)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def _load(driver: WebDriver, url: str) -> None:
    driver.get(url)  # returns once the load event fired (page load strategy "normal")
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not finish loading in {PAGE_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _console_errors(driver: WebDriver) -> list[str]:
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(e.get("message", e)) for e in entries if e.get("level") == "SEVERE"]


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"page checks run against loopback only, not {host!r}")
