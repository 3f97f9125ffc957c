"""The evidence page and contact sheet (`service/evidence/page.py`), rendered from real pictures: XSS, CSP,
the overlay states, the plot's geometry and the PNG. The browser checks of the same page:
tests/test_evidence_browser.py.

`sample_evidence` builds a document with real JPEGs (the public-domain astronaut and Grace Hopper photos that
devtools/media_factory.py loads from scikit-image / matplotlib: no network)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from devtools import media_factory as mf
from service.evidence.document import (
    AuditEntry,
    EvidenceDocument,
    EvidenceFace,
    EvidenceFrame,
    SensitivityMap,
    SeriesPoint,
)
from service.evidence.page import PLOT_ID, contact_sheet_png, content_security_policy, plot_svg, render_html
from service.evidence.pictures import EvidencePictures
from service.schemas import MediaInfo, ModelRef, UsedThresholds

NONCE = "dGVzdC1ub25jZS0xMjM0"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'

# A 5-s clip sampled every 0.25 s; no face at 1.0-1.25 s and at 3.25 s (gaps in the plot). The kept frames
# (1.5 s, 3.0 s, 4.5 s) carry the scores of their faces: 0.65, 0.70, 0.80.
SERIES: list[float | None] = [
    *(0.2, 0.22, 0.25, 0.24, None, None),
    *(0.65, 0.6, 0.58, 0.62, 0.66, 0.68, 0.7, None),
    *(0.74, 0.77, 0.79, 0.82, 0.8, 0.78, 0.76),
]


# --------------------------------------------------------------------------------------------- sample data


def _jpeg(rgb: npt.NDArray[np.uint8], quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf.tobytes())


def _resize(rgb: npt.NDArray[np.uint8], w: int, h: int) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), np.uint8)


def _photo_face(name: str, w: int, h: int) -> tuple[float, float, float, float]:
    fx1, fy1, fx2, fy2 = mf.PHOTO_FACE_BOXES[name]
    return (fx1 * w, fy1 * h, fx2 * w, fy2 * h)


def _frames() -> list[tuple[npt.NDArray[np.uint8], list[tuple[float, float, float, float]]]]:
    """Three kept pictures with their face boxes: both faces on the scene (16:9), astronaut (square), Grace
    Hopper (portrait)."""
    photos = mf.face_photos()
    scene = mf.face_free_scene(640, 360)
    boxes = []
    for name, x in (("astronaut", 60), ("grace_hopper", 360)):
        ph, pw = photos[name].shape[:2]
        h = 260
        w = round(pw * h / ph)
        scene[50 : 50 + h, x : x + w] = _resize(photos[name], w, h)
        x1, y1, x2, y2 = _photo_face(name, w, h)
        boxes.append((x + x1, 50 + y1, x + x2, 50 + y2))
    astro = _resize(photos["astronaut"], 480, 480)
    hopper_h, hopper_w = photos["grace_hopper"].shape[:2]
    hw = round(hopper_w * 480 / hopper_h)
    hopper = _resize(photos["grace_hopper"], hw, 480)
    return [
        (scene, boxes),
        (astro, [_photo_face("astronaut", 480, 480)]),
        (hopper, [_photo_face("grace_hopper", hw, 480)]),
    ]


def _overlay(crop: npt.NDArray[np.uint8], drop: list[list[float]]) -> npt.NDArray[np.uint8]:
    grid = np.asarray(drop, np.float32)
    heat = cv2.resize(grid, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_CUBIC)
    heat = np.clip((heat - heat.min()) / max(1e-6, float(heat.max() - heat.min())) * 255, 0, 255)
    colour = cv2.cvtColor(cv2.applyColorMap(heat.astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.asarray(cv2.addWeighted(crop, 0.55, colour, 0.45, 0), np.uint8)


def sample_evidence(overlays: str = "ready", **fields: Any) -> tuple[EvidenceDocument, EvidencePictures]:
    """A flagged 5-s video's evidence from real photos: 3 kept frames (4 faces), 4 crops, their overlays when
    `overlays == "ready"`. `fields` override document fields (hostile ids, reasons...)."""
    frames: list[EvidenceFrame] = []
    frame_jpegs: list[bytes] = []
    crops: list[bytes] = []
    overlay_jpegs: list[bytes] = []
    maps: list[SensitivityMap] = []
    times = (1.5, 3.0, 4.5)
    track = 0
    for i, ((rgb, boxes), t) in enumerate(zip(_frames(), times, strict=True)):
        faces = []
        for k, box in enumerate(boxes):
            score = 0.6 + 0.1 * i + 0.05 * k
            faces.append(EvidenceFace(box=box, track_id=track + k, score=score, scored=k == 0))
            x1, y1, x2, y2 = (round(v) for v in box)
            crop = _resize(np.ascontiguousarray(rgb[y1:y2, x1:x2]), 224, 224)
            drop = [[0.3 * np.exp(-((r - 2) ** 2 + (c - 3) ** 2) / 4) for c in range(6)] for r in range(6)]
            crops.append(_jpeg(crop))
            overlay_jpegs.append(_jpeg(_overlay(crop, drop)))
            maps.append(SensitivityMap(frame=i, face=k, track_id=track + k, score=score, grid=6, drop=drop))
        track += len(boxes)
        frames.append(
            EvidenceFrame(
                index=round(t * 30),
                time_s=t,
                score=max(f.score for f in faces),
                width=rgb.shape[1],
                height=rgb.shape[0],
                faces=faces,
            )
        )
        frame_jpegs.append(_jpeg(rgb))
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    ready = overlays == "ready"
    values: dict[str, Any] = {
        "subject": "decision",
        "subject_id": "vid-123",
        "tenant": "acme",
        "decision": "flag",
        "score": 0.87,
        "reasons": ["face track 0 above the flag threshold", "2 of 3 tracks manipulated"],
        "model": ModelRef(name="ensemble-efficientnet", version="2025.02"),
        "thresholds": UsedThresholds(review=0.5, flag=0.8, source="ensemble"),
        "aggregation": "top-k mean of crop scores per model, then mean",
        "media": MediaInfo(sha256="ab" * 32, kind="video", duration_s=5.0, width=1280, height=720),
        "frames": frames,
        "series": [SeriesPoint(time_s=0.25 * i, score=s) for i, s in enumerate(SERIES)],
        "overlays": overlays,
        "sensitivity": maps if ready else [],
        "audit": [
            AuditEntry(at=now, event="decided", detail="flag at 0.87"),
            AuditEntry(at=now + timedelta(seconds=1), event="evidence_captured", detail="3 frames, 4 crops"),
            *([AuditEntry(at=now + timedelta(seconds=9), event="overlays_ready")] if ready else []),
        ],
        "captured_at": now,
        "expires_at": now + timedelta(days=30),
    }
    values.update(fields)
    doc = EvidenceDocument(**values)
    return doc, EvidencePictures(frames=frame_jpegs, crops=crops, overlays=overlay_jpegs if ready else [])


class _Parsed(HTMLParser):
    """Every start tag with its attributes, and the page's text (character references decoded)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def ready() -> tuple[EvidenceDocument, EvidencePictures]:
    return sample_evidence("ready")


@pytest.fixture(scope="module")
def pending() -> tuple[EvidenceDocument, EvidencePictures]:
    return sample_evidence("pending")


# --------------------------------------------------------------------------------------------- tests


def test_csp_is_strict_and_scriptless() -> None:
    assert content_security_policy(NONCE) == (
        "default-src 'none'; img-src data:; style-src 'nonce-dGVzdC1ub25jZS0xMjM0'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    assert "script" not in content_security_policy(NONCE)


@pytest.mark.parametrize("nonce", ["", "short", "abc'; script-src *", 'x" onload="y' * 2, "a b c d e f g h"])
def test_a_nonce_that_could_break_out_is_refused(nonce: str, ready: tuple[EvidenceDocument, Any]) -> None:
    with pytest.raises(ValueError, match="nonce"):
        content_security_policy(nonce)
    with pytest.raises(ValueError, match="nonce"):
        render_html(*ready, nonce=nonce)


def test_page_is_self_contained_and_uses_only_the_nonced_style(ready: tuple[EvidenceDocument, Any]) -> None:
    page = render_html(*ready, nonce=NONCE)
    parsed = _Parsed(page)
    doc, pics = ready
    assert parsed.all("script") == []
    assert [a.get("nonce") for a in parsed.all("style")] == [NONCE]
    assert all("style" not in a for _, a in parsed.tags), "an inline style attribute: the CSP would refuse it"
    srcs = [a["src"] or "" for a in parsed.all("img")]
    assert len(srcs) == len(pics.frames) + len(pics.crops) + len(pics.overlays) == 3 + 4 + 4
    assert all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    assert [a["href"] for a in parsed.all("link")] == ["data:,"]
    assert not re.search(r"(?:src|href)=\"(?!data:)", page), "a non-data: URL would be a third-party fetch"
    text = " ".join(parsed.text)
    for value in ("vid-123", "acme", "ensemble-efficientnet 2025.02", doc.media.sha256, "review 0.500"):
        assert value in text
    assert "flag at 0.87" in text and "overlays_ready" in text  # the audit trail


def test_every_box_is_drawn_over_its_frame_with_score_and_track(ready: tuple[EvidenceDocument, Any]) -> None:
    doc, _ = ready
    parsed = _Parsed(render_html(*ready, nonce=NONCE))
    boxes_svgs = [a for t, a in parsed.tags if t == "svg" and a.get("class") == "boxes"]
    assert [a["viewbox"] for a in boxes_svgs] == [f"0 0 {f.width} {f.height}" for f in doc.frames]
    faces = [a for t, a in parsed.tags if t == "g" and a.get("class") == "face"]
    assert [(a["data-track"], a["data-score"]) for a in faces] == [
        (str(face.track_id), f"{face.score:.3f}") for frame in doc.frames for face in frame.faces
    ]
    rects = [a for t, a in parsed.tags if t == "rect"]
    first = doc.frames[0].faces[0].box
    assert float(rects[0]["x"] or 0) == pytest.approx(first[0], abs=0.01)
    assert float(rects[0]["width"] or 0) == pytest.approx(first[2] - first[0], abs=0.01)
    assert "#0 0.600" in " ".join(parsed.text)


@pytest.mark.parametrize(
    "where", ["subject_id", "reasons", "model", "tenant", "aggregation", "audit", "shown_for"]
)
@pytest.mark.parametrize(
    "payload", [XSS_SCRIPT, XSS_ATTR, "x' onmouseover='alert(1)", "</title><script>x</script>"]
)
def test_hostile_values_render_as_text(where: str, payload: str) -> None:
    now = datetime(2025, 3, 1, tzinfo=UTC)
    value: Any = {
        "reasons": [payload],
        "model": ModelRef(name=payload, version=payload),
        "audit": [AuditEntry(at=now, event=payload, detail=payload)],
    }.get(where, payload)
    doc, pics = sample_evidence("pending", **{where: value})
    page = render_html(doc, pics, nonce=NONCE)
    parsed = _Parsed(page)
    assert parsed.all("script") == []
    assert [(t, k) for t, a in parsed.tags for k in a if k.startswith("on")] == []
    assert all((a["src"] or "").startswith("data:") for a in parsed.all("img")), "an injected <img>"
    assert payload in "".join(parsed.text)  # shown, as text
    # The plot is valid XML even with the value in its title and label (SVG text and attributes).
    svg = plot_svg(doc)
    root = ET.fromstring(svg)
    assert root.get("id") == PLOT_ID
    if where == "subject_id":
        assert payload in (root.get("aria-label") or "")
        assert payload in "".join(root.itertext())


def test_pending_says_so_shows_crops_and_refreshes(pending: tuple[EvidenceDocument, Any]) -> None:
    doc, pics = pending
    page = render_html(doc, pics, nonce=NONCE, refresh_seconds=7)
    parsed = _Parsed(page)
    assert "Sensitivity maps are being computed" in " ".join(parsed.text)
    assert [a["content"] for a in parsed.all("meta") if a.get("http-equiv") == "refresh"] == ["7"]
    assert len(parsed.all("img")) == len(pics.frames) + len(pics.crops)  # no overlays yet
    assert not any("sensitivity overlay" in (a["alt"] or "") for a in parsed.all("img"))
    assert PLOT_ID in page  # the rest is there
    no_refresh = _Parsed(render_html(doc, pics, nonce=NONCE, refresh_seconds=None))
    assert not [a for a in no_refresh.all("meta") if a.get("http-equiv") == "refresh"]


def test_ready_shows_overlays_beside_crops_and_does_not_refresh(ready: tuple[EvidenceDocument, Any]) -> None:
    doc, pics = ready
    parsed = _Parsed(render_html(doc, pics, nonce=NONCE, refresh_seconds=5))
    assert not [a for a in parsed.all("meta") if a.get("http-equiv") == "refresh"]
    assert "being computed" not in " ".join(parsed.text)
    pairs = [a for t, a in parsed.tags if t == "figure" and "pair" in (a.get("class") or "").split()]
    assert len(pairs) == 4 and all("with-overlay" in (a["class"] or "") for a in pairs)
    overlays = [a for a in parsed.all("img") if (a["alt"] or "").endswith("sensitivity overlay")]
    assert len(overlays) == 4
    assert overlays[0]["alt"] == "track #0, frame 1 at 1.5 s: score 0.600, grid 6 x 6: sensitivity overlay"


@pytest.mark.parametrize(("state", "words"), [("failed", "failed"), ("skipped", "were not computed")])
def test_failed_and_skipped_overlays_are_explained(state: str, words: str) -> None:
    doc, pics = sample_evidence(state)
    parsed = _Parsed(render_html(doc, pics, nonce=NONCE))
    assert words in " ".join(parsed.text)
    assert not [a for a in parsed.all("meta") if a.get("http-equiv") == "refresh"]


def test_shown_for_names_the_original_and_the_repost() -> None:
    doc, pics = sample_evidence("ready", shown_for="repost-9")
    text = "".join(_Parsed(render_html(doc, pics, nonce=NONCE)).text)
    assert "evidence of the original upload vid-123, shown for repost-9" in text


def _y_of(root: ET.Element) -> dict[str, float]:
    ns = "{http://www.w3.org/2000/svg}"
    out: dict[str, float] = {}
    for line in root.iter(f"{ns}line"):
        cls = line.get("class") or ""
        if cls in ("gridline", "threshold threshold-review", "threshold threshold-flag"):
            out[f"{cls.split()[-1]}={line.get('data-value')}"] = float(line.get("y1") or "nan")
            assert line.get("y1") == line.get("y2")  # horizontal
    return out


def test_plot_draws_both_thresholds_at_their_height(ready: tuple[EvidenceDocument, Any]) -> None:
    doc, _ = ready
    doc = doc.model_copy(update={"thresholds": UsedThresholds(review=0.42, flag=0.77, source="settings")})
    root = ET.fromstring(plot_svg(doc, width=600, height=200))
    assert (root.get("viewBox"), root.get("id")) == ("0 0 600 200", PLOT_ID)
    y = _y_of(root)
    y0, y1 = y["gridline=0.0"], y["gridline=1.0"]
    assert y0 > y1  # SVG y grows downwards: score 1 on top
    assert y["threshold-review=0.42"] == pytest.approx(y0 + 0.42 * (y1 - y0), abs=0.01)
    assert y["threshold-flag=0.77"] == pytest.approx(y0 + 0.77 * (y1 - y0), abs=0.01)
    labels = [
        t.text for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "threshold-label"
    ]
    assert labels == ["review 0.420", "flag 0.770"]


def test_plot_has_gaps_where_no_face_was_found(ready: tuple[EvidenceDocument, Any]) -> None:
    doc, _ = ready
    root = ET.fromstring(plot_svg(doc))
    ns = "{http://www.w3.org/2000/svg}"
    lines = [p for p in root.iter(f"{ns}polyline") if p.get("class") == "series"]
    runs = [
        [(float(a), float(b)) for a, b in (xy.split(",") for xy in (p.get("points") or "").split())]
        for p in lines
    ]
    assert [len(r) for r in runs] == [4, 7, 7]  # SERIES split at its None points
    y = _y_of(root)
    y0, y1 = y["gridline=0.0"], y["gridline=1.0"]
    scores = [s for s in SERIES if s is not None]
    flat = [pt for r in runs for pt in r]
    assert [py for _, py in flat] == pytest.approx([y0 + s * (y1 - y0) for s in scores], abs=0.01)
    xs = [px for px, _ in flat]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    # The first point after the gap is at t=1.5 s on a 0..5 s axis (the clip's duration).
    left, right = xs[0], xs[-1]  # t=0 and t=5.0 (the last point of SERIES is at 5.0 s)
    assert 0.25 * (len(SERIES) - 1) == 5.0
    assert flat[4][0] == pytest.approx(left + (right - left) * (1.5 / 5.0), abs=0.01)
    ticks = [t.text for t in root.iter(f"{ns}text") if (t.text or "").strip().isdigit()]
    assert ticks[-1] == "5"  # time axis in seconds


def test_a_lone_point_and_an_empty_series() -> None:
    doc, _ = sample_evidence(
        "ready",
        series=[
            SeriesPoint(time_s=0, score=None),
            SeriesPoint(time_s=1, score=0.9),
            SeriesPoint(time_s=2, score=None),
        ],
    )
    root = ET.fromstring(plot_svg(doc))
    ns = "{http://www.w3.org/2000/svg}"
    assert [c.get("class") for c in root.iter(f"{ns}circle")].count("series-point") == 1
    assert not list(root.iter(f"{ns}polyline"))
    empty, _ = sample_evidence(
        "ready",
        series=[],
        frames=[],
        score=None,
        media=MediaInfo(sha256="0" * 64, kind="image", duration_s=None, width=10, height=10),
    )
    root = ET.fromstring(plot_svg(empty))
    assert "no face on any sampled frame" in "".join(root.itertext())


def test_contact_sheet_is_one_png_with_everything(ready: tuple[EvidenceDocument, Any]) -> None:
    png = contact_sheet_png(*ready)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    h, w = img.shape[:2]
    assert w == 1280 and 600 < h < 2400
    assert float(img.std()) > 20  # pictures, not a blank page


def test_contact_sheet_survives_hostile_text_and_missing_pictures() -> None:
    doc, pics = sample_evidence("pending", subject_id="vidéo-✓-" + XSS_SCRIPT * 10, tenant="t\n\x00")
    broken = EvidencePictures(frames=[pics.frames[0], b"", b"not a jpeg"], crops=pics.crops[:1])
    img = cv2.imdecode(np.frombuffer(contact_sheet_png(doc, broken), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 1280
