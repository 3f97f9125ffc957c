"""Render an evidence document and its pictures for a reviewer: one self-contained HTML page, or one PNG.

A reviewer opens the page from a queue tool through a signed link, so it must stand alone and be safe to
open: every picture is a `data:` URI, the only style is one nonce'd `<style>`, there is no script at all (the
Content-Security-Policy forbids it, so an injected `<script>` could not run even if escaping failed), and
every value that came from outside (ids, reasons, model names, tenant, audit details) is HTML-escaped, in text
and in attributes alike. Face boxes are an SVG layer over the stored JPEG (not drawn into it), so the picture
shown is exactly the one stored. All functions are pure: the API layer adds headers, auth and storage.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime

import cv2
import numpy as np
import numpy.typing as npt

from service.evidence.document import EvidenceDocument, EvidenceFace, EvidenceFrame, SeriesPoint
from service.evidence.pictures import EvidencePictures

__all__ = [
    "PLOT_ID",
    "contact_sheet_png",
    "content_security_policy",
    "plot_svg",
    "render_html",
]

PLOT_ID = "score-plot"
"""The `id` of the score-over-time `<svg>` (what the browser test looks for)."""

_NONCE = re.compile(r"[A-Za-z0-9+/_=-]{8,200}")

# Decision colours: the badge on the page, the boxes (by face score) and the contact sheet.
_COLOURS = {"flag": "#b3261e", "review": "#a15c00", "allow": "#1e7b34"}
_BGR = {"flag": (30, 38, 179), "review": (0, 92, 161), "allow": (52, 123, 30)}

_OVERLAY_NOTES = {
    "pending": "Sensitivity maps are being computed. The crops are shown without them for now; this page "
    "reloads by itself until they are ready.",
    "failed": "Computing the sensitivity maps failed; the face crops are shown without them.",
    "skipped": "Sensitivity maps were not computed for this evidence (skipped); the face crops are shown "
    "without them.",
}


def content_security_policy(nonce: str) -> str:
    """The page's Content-Security-Policy: nothing but `data:` pictures and the one nonce'd `<style>`.

    No script source at all, so even a value that slipped past escaping could not execute; no base, form or
    framing (clickjacking a reviewer's decision). The nonce must be fresh per response
    (`secrets.token_urlsafe`).
    """
    _check_nonce(nonce)
    return (
        "default-src 'none'; img-src data:; "
        f"style-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def render_html(
    document: EvidenceDocument,
    pictures: EvidencePictures,
    *,
    nonce: str,
    refresh_seconds: int | None = 5,
) -> str:
    """The evidence page: header facts, kept frames with boxes, crops with overlays, plot, audit trail.

    While the overlays are `pending` the page says so and, with `refresh_seconds`, reloads itself (a
    `<meta http-equiv="refresh">`: no script needed) so the reviewer sees the maps when they land.
    """
    _check_nonce(nonce)
    doc = document
    refresh = ""
    if doc.overlays == "pending" and refresh_seconds is not None:
        refresh = f'<meta http-equiv="refresh" content="{max(1, int(refresh_seconds))}">\n'
    title = f"Evidence: {doc.decision} for {_subject_noun(doc)} {doc.subject_id}"
    body = "\n".join(
        (
            _header_html(doc),
            _frames_html(doc, pictures),
            _crops_html(doc, pictures),
            '<section class="plot"><h2>Score over time</h2>\n' + plot_svg(doc) + "\n"
            f'<p class="muted">Highest face score of every sampled frame (gaps: no face); dots: the kept '
            f"frames. Review at {_num(doc.thresholds.review)}, flag at {_num(doc.thresholds.flag)}.</p>"
            "</section>",
            _audit_html(doc),
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        # An empty data: icon: no /favicon.ico request (which the CSP would refuse, logging a console error).
        '<link rel="icon" href="data:,">\n'
        f"{refresh}<title>{_e(title)}</title>\n"
        f'<style nonce="{_e(nonce)}">{_CSS}</style>\n'
        "</head>\n<body>\n<main>\n"
        f"{body}\n"
        "</main>\n</body>\n</html>\n"
    )


def plot_svg(document: EvidenceDocument, *, width: int = 640, height: int = 160) -> str:
    """The score over time as a standalone SVG (inlined in the page), y from 0 to 1, time in seconds.

    One `<polyline class="series">` per run of frames with a face (a frame without one is a gap, not a zero:
    "no face" is not "looks real"), a lone point as a circle; both thresholds as labelled horizontal lines;
    the kept frames as dots. Every mark carries `data-*` values so tests check geometry, not pixels.
    """
    if width < 160 or height < 80:
        raise ValueError(f"plot too small: {width}x{height} (at least 160x80)")
    doc = document
    left, right, top, bottom = 36.0, 78.0, 10.0, 30.0
    x0, x1, y_top, y_bottom = left, width - right, top, height - bottom
    t_max = _t_max(doc)
    label = f"Score over time of {_subject_noun(doc)} {doc.subject_id}"

    def x(t: float) -> float:
        return x0 + (min(max(t, 0.0), t_max) / t_max) * (x1 - x0)

    def y(v: float) -> float:
        return y_bottom - min(max(v, 0.0), 1.0) * (y_bottom - y_top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{PLOT_ID}" class="score-plot" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11" aria-label="{_e(label)}">',
        f"<title>{_e(label)}: {_e(doc.decision)}, score {_e(_score(doc.score))}</title>",
        f'<rect class="frame-area" x="{_c(x0)}" y="{_c(y_top)}" width="{_c(x1 - x0)}" '
        f'height="{_c(y_bottom - y_top)}" fill="#fff" stroke="#c5cad3"/>',
    ]
    for v in (0.0, 0.5, 1.0):
        parts.append(
            f'<line class="gridline" data-value="{v}" x1="{_c(x0)}" x2="{_c(x1)}" y1="{_c(y(v))}" '
            f'y2="{_c(y(v))}" stroke="#e3e6eb"/>'
            f'<text x="{_c(x0 - 4)}" y="{_c(y(v) + 4)}" text-anchor="end" fill="#555">{v:g}</text>'
        )
    step = _tick_step(t_max)
    n_ticks = int(t_max / step + 1e-9)
    for i in range(n_ticks + 1):
        t = i * step
        parts.append(
            f'<line class="tick" x1="{_c(x(t))}" x2="{_c(x(t))}" y1="{_c(y_bottom)}" y2="{_c(y_bottom + 4)}" '
            f'stroke="#555"/><text x="{_c(x(t))}" y="{_c(y_bottom + 15)}" text-anchor="middle" '
            f'fill="#555">{_e(_seconds(t))}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{_c(x1)}" y="{_c(height - 2)}" text-anchor="end" fill="#555">'
        "time (s)</text>"
    )
    for name, value, colour in (
        ("review", doc.thresholds.review, _COLOURS["review"]),
        ("flag", doc.thresholds.flag, _COLOURS["flag"]),
    ):
        if not math.isfinite(value):
            continue
        parts.append(
            f'<line class="threshold threshold-{name}" data-value="{value!r}" x1="{_c(x0)}" x2="{_c(x1)}" '
            f'y1="{_c(y(value))}" y2="{_c(y(value))}" stroke="{colour}" stroke-width="1.5" '
            f'stroke-dasharray="5 3"/>'
            f'<text class="threshold-label" x="{_c(x1 + 4)}" y="{_c(y(value) + 4)}" fill="{colour}">'
            f"{name} {_e(_num(value))}</text>"
        )
    for run in _runs(doc.series):
        pts = " ".join(f"{_c(x(p.time_s))},{_c(y(s))}" for p, s in run)
        if len(run) == 1:
            ((p, s),) = run
            parts.append(
                f'<circle class="series-point" cx="{_c(x(p.time_s))}" cy="{_c(y(s))}" r="2.5" '
                'fill="#1d4f91"/>'
            )
        else:
            parts.append(
                f'<polyline class="series" points="{pts}" fill="none" stroke="#1d4f91" stroke-width="1.8" '
                'stroke-linejoin="round"/>'
            )
    for i, frame in enumerate(doc.frames):
        if frame.score is not None and math.isfinite(frame.time_s) and math.isfinite(frame.score):
            parts.append(
                f'<circle class="kept" cx="{_c(x(frame.time_s))}" cy="{_c(y(frame.score))}" r="4" '
                f'fill="none" stroke="#111" stroke-width="1.2"><title>kept frame {i + 1}: '
                f"{_e(_seconds(frame.time_s))} s, score {_e(_num(frame.score))}</title></circle>"
            )
    if not any(p.score is not None for p in doc.series):
        parts.append(
            f'<text class="empty" x="{_c((x0 + x1) / 2)}" y="{_c((y_top + y_bottom) / 2)}" '
            'text-anchor="middle" fill="#555">no face on any sampled frame</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def contact_sheet_png(document: EvidenceDocument, pictures: EvidencePictures) -> bytes:
    """One PNG (`?format=png`) for tools that cannot show HTML: a title line, the kept frames with their
    boxes and scores, the score over time, then each crop beside its overlay. Text is ASCII only (OpenCV's
    Hershey fonts)."""
    doc = document
    sheet_w, pad = 1280, 12
    blocks: list[npt.NDArray[np.uint8]] = []

    title = f"{doc.decision.upper()}  score {_score(doc.score)}  {_subject_noun(doc)} {doc.subject_id}"
    sub = (
        f"review {_num(doc.thresholds.review)} / flag {_num(doc.thresholds.flag)}  model "
        f"{doc.model.name} {doc.model.version}  tenant {doc.tenant}"
    )
    head = _canvas(sheet_w, 62, (255, 255, 255))
    cv2.rectangle(head, (0, 0), (10, 62), _BGR[doc.decision], -1)
    _put(head, title, (pad + 10, 28), 0.8, (20, 20, 20), 2, sheet_w - 2 * pad - 10)
    _put(head, sub, (pad + 10, 52), 0.5, (70, 70, 70), 1, sheet_w - 2 * pad - 10)
    blocks.append(head)

    # The kept frames: three per row, boxes scaled from the stored picture's pixels.
    cols = max(1, min(3, len(doc.frames)))
    tile_w = (sheet_w - pad * (cols + 1)) // cols
    for row_start in range(0, len(doc.frames), cols):
        row = list(enumerate(doc.frames))[row_start : row_start + cols]
        tiles = [_frame_tile(frame, _picture_at(pictures.frames, i), tile_w, doc) for i, frame in row]
        row_h = max(t.shape[0] for t in tiles)
        strip = _canvas(sheet_w, row_h + pad, (255, 255, 255))
        for k, tile in enumerate(tiles):
            x = pad + k * (tile_w + pad)
            strip[: tile.shape[0], x : x + tile.shape[1]] = tile
        blocks.append(strip)
    if not doc.frames:
        empty = _canvas(sheet_w, 40, (255, 255, 255))
        _put(empty, "No kept frames.", (pad, 26), 0.6, (70, 70, 70), 1, sheet_w)
        blocks.append(empty)

    blocks.append(_plot_strip(doc, sheet_w, 150, pad))

    # The crops, each beside its overlay (or alone, with the reason, while there is none).
    note = {
        "pending": "Sensitivity maps are being computed: crops only.",
        "failed": "Sensitivity maps failed: crops only.",
        "skipped": "Sensitivity maps skipped: crops only.",
        "ready": "Face crops (left) and where the model looked (right: warmer = raised the score more).",
    }[doc.overlays]
    caption = _canvas(sheet_w, 30, (255, 255, 255))
    _put(caption, note, (pad, 20), 0.55, (40, 40, 40), 1, sheet_w - 2 * pad)
    blocks.append(caption)
    side = 150
    with_overlay = doc.overlays == "ready" and bool(pictures.overlays)
    pair_w = side * 2 + 4 if with_overlay else side
    per_row = max(1, (sheet_w - pad) // (pair_w + pad))
    for row_start in range(0, len(pictures.crops), per_row):
        strip = _canvas(sheet_w, side + 22 + pad, (255, 255, 255))
        for k, j in enumerate(range(row_start, min(len(pictures.crops), row_start + per_row))):
            x = pad + k * (pair_w + pad)
            strip[:side, x : x + side] = _fit(_decode(pictures.crops[j]), side, side)
            if with_overlay:
                strip[:side, x + side + 4 : x + 2 * side + 4] = _fit(
                    _decode(_picture_at(pictures.overlays, j)), side, side
                )
            label = f"face {j + 1}"
            if j < len(doc.sensitivity):
                sm = doc.sensitivity[j]
                label = f"track {sm.track_id}  score {_num(sm.score)}"
            _put(strip, label, (x, side + 16), 0.45, (40, 40, 40), 1, pair_w)
        blocks.append(strip)

    sheet = np.vstack(blocks)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:  # pragma: no cover - OpenCV's PNG encoder does not fail on a uint8 BGR image
        raise RuntimeError("could not encode the contact sheet")
    return bytes(buf.tobytes())


# --------------------------------------------------------------------------------------------- HTML parts


def _header_html(doc: EvidenceDocument) -> str:
    th = doc.thresholds
    media = doc.media
    size = f"{media.width} x {media.height} px"
    duration = media.duration_s
    facts: list[tuple[str, str]] = [
        ("Score", _score(doc.score)),
        ("Thresholds", f"review {_num(th.review)} / flag {_num(th.flag)} ({th.source or 'source unknown'})"),
        ("Model", f"{doc.model.name} {doc.model.version}"),
        ("Aggregation", doc.aggregation),
        ("Tenant", doc.tenant),
        ("Media", f"{media.kind}, {size}" + (f", {_seconds(duration)} s" if duration is not None else "")),
        ("SHA-256", media.sha256),
        ("Captured", _when(doc.captured_at)),
        ("Expires", _when(doc.expires_at)),
    ]
    dl = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
    reasons = "".join(f"<li>{_e(r)}</li>" for r in doc.reasons) or "<li>none given</li>"
    shown_for = ""
    if doc.shown_for is not None:
        shown_for = (
            f'<p class="notice shown-for">This is the evidence of the original upload '
            f"<code>{_e(doc.subject_id)}</code>, shown for <code>{_e(doc.shown_for)}</code> "
            "(an exact or near-duplicate repost).</p>"
        )
    return (
        "<header>"
        f'<p class="kicker">dfguard evidence: {_e(_subject_noun(doc))}</p>'
        f'<h1><span class="badge badge-{_e(doc.decision)}">{_e(doc.decision)}</span> '
        f'<code class="subject-id">{_e(doc.subject_id)}</code></h1>'
        f"{shown_for}"
        f'<dl class="facts">{dl}</dl>'
        f'<h2>Reasons</h2><ul class="reasons">{reasons}</ul>'
        "</header>"
    )


def _frames_html(doc: EvidenceDocument, pictures: EvidencePictures) -> str:
    if not doc.frames:
        return '<section class="frames-section"><h2>Kept frames</h2><p class="muted">None kept.</p></section>'
    figures = []
    for i, frame in enumerate(doc.frames):
        data = _picture_at(pictures.frames, i)
        alt = f"kept frame {i + 1} at {_seconds(frame.time_s)} s"
        if data:
            pic = (
                f'<div class="pic"><img src="{_data_uri(data)}" width="{frame.width}" '
                f'height="{frame.height}" alt="{_e(alt)}">{_boxes_svg(frame, doc)}</div>'
            )
        else:
            pic = '<p class="notice">This frame\'s picture is missing.</p>'
        faces = ", ".join(f"#{f.track_id} {_num(f.score)}" for f in frame.faces) or "no face"
        figures.append(
            f'<figure class="frame">{pic}<figcaption>{_e(_seconds(frame.time_s))} s (frame {frame.index}) · '
            f"score {_e(_score(frame.score))} · faces: {_e(faces)}</figcaption></figure>"
        )
    return (
        '<section class="frames-section"><h2>Kept frames</h2>'
        '<p class="muted">The most suspicious sampled frames, spread over time; every face box with its '
        "track id and score (red: at or above the flag threshold, amber: review, green: below).</p>"
        f'<div class="frames">{"".join(figures)}</div></section>'
    )


def _boxes_svg(frame: EvidenceFrame, doc: EvidenceDocument) -> str:
    """The boxes as an SVG layer in the picture's own pixel space, stretched over the `<img>`."""
    w, h = max(1, frame.width), max(1, frame.height)
    font = max(10.0, w / 32)
    marks = []
    for face in frame.faces:
        box = _clip_box(face, w, h)
        if box is None:
            continue
        x1, y1, x2, y2 = box
        label = f"#{face.track_id} {_num(face.score)}" + ("" if face.scored else " (track)")
        colour = _COLOURS[_level(face.score, doc.thresholds.review, doc.thresholds.flag)]
        ty = y1 - font * 0.3 if y1 - font > 0 else y1 + font
        marks.append(
            f'<g class="face" data-track="{face.track_id}" data-score="{_e(_num(face.score))}">'
            f"<title>track {face.track_id}, score {_e(_num(face.score))}</title>"
            f'<rect x="{_c(x1)}" y="{_c(y1)}" width="{_c(x2 - x1)}" height="{_c(y2 - y1)}" fill="none" '
            f'stroke="{colour}" stroke-width="2.5" vector-effect="non-scaling-stroke"/>'
            f'<text x="{_c(x1 + 2)}" y="{_c(ty)}" font-size="{_c(font)}" font-family="sans-serif" '
            f'font-weight="bold" fill="#fff" stroke="#000" stroke-width="{_c(font / 6)}" '
            'paint-order="stroke">'
            f"{_e(label)}</text></g>"
        )
    return (
        f'<svg class="boxes" viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">'
        f"{''.join(marks)}</svg>"
    )


def _crops_html(doc: EvidenceDocument, pictures: EvidencePictures) -> str:
    notice = ""
    if doc.overlays != "ready":
        notice = (
            f'<p class="notice overlays-{doc.overlays}" id="overlays-{doc.overlays}">'
            f"{_e(_OVERLAY_NOTES[doc.overlays])}</p>"
        )
    ready = doc.overlays == "ready"
    pairs = []
    for j, crop in enumerate(pictures.crops):
        sm = doc.sensitivity[j] if j < len(doc.sensitivity) else None
        caption = f"face {j + 1}"
        if sm is not None:
            at = ""
            if 0 <= sm.frame < len(doc.frames):
                at = f", frame {sm.frame + 1} at {_seconds(doc.frames[sm.frame].time_s)} s"
            caption = f"track #{sm.track_id}{at}: score {_num(sm.score)}, grid {sm.grid} x {sm.grid}"
        imgs = f'<img src="{_data_uri(crop)}" alt="{_e(caption)}: crop">' if crop else ""
        overlay = _picture_at(pictures.overlays, j) if ready else b""
        if overlay:
            imgs += f'<img src="{_data_uri(overlay)}" alt="{_e(caption)}: sensitivity overlay">'
        pairs.append(
            f'<figure class="pair{" with-overlay" if overlay else ""}"><div class="pair-pics">{imgs}</div>'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    body = "".join(pairs) or '<p class="muted">No face crops were kept.</p>'
    legend = (
        '<p class="muted">Left: the face as the model saw it. Right: where it looked (a grey patch slid '
        "over the crop; warmer cells raised the score more).</p>"
        if ready
        else ""
    )
    return (
        f'<section class="crops-section"><h2>Faces and where the model looked</h2>{notice}{legend}'
        f'<div class="pairs">{body}</div></section>'
    )


def _audit_html(doc: EvidenceDocument) -> str:
    rows = "".join(
        f"<tr><td>{_e(_when(a.at))}</td><td>{_e(a.event)}</td><td>{_e(a.detail)}</td></tr>" for a in doc.audit
    )
    if not rows:
        rows = '<tr><td colspan="3">No audit entries.</td></tr>'
    return (
        '<section class="audit"><h2>Audit trail</h2><table><thead><tr><th class="col-at">When (UTC)</th>'
        f'<th class="col-event">Event</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


_CSS = """
*,*::before,*::after{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#f4f5f7;color:#1d232a;overflow-wrap:anywhere;
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:16px}
h1{font-size:1.4rem;margin:.2rem 0 .6rem;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.92em}
.kicker{margin:0;color:#5b6470;font-size:.85rem;text-transform:uppercase;letter-spacing:.04em}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:4px;color:#fff;text-transform:uppercase;
font-size:1rem;letter-spacing:.05em}
.badge-flag{background:#b3261e}.badge-review{background:#a15c00}.badge-allow{background:#1e7b34}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,230px),1fr));gap:.4rem 1rem;
margin:0;padding:.8rem;background:#fff;border:1px solid #dde1e6;border-radius:6px}
.facts div{min-width:0}.facts dt{font-size:.78rem;color:#5b6470}.facts dd{margin:0}
.reasons{margin:.2rem 0;padding-left:1.2rem}
.notice{padding:.6rem .8rem;background:#fff6e0;border:1px solid #e8c66a;border-radius:6px}
.muted{color:#5b6470;font-size:.88rem}
.frames{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;min-width:0}
.frame{flex:1 1 320px;max-width:100%;background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px}
.pic{position:relative;line-height:0}
.pic img{display:block;width:100%;max-width:100%;height:auto}
.pic svg{position:absolute;top:0;left:0;width:100%;height:100%;overflow:hidden}
figcaption{font-size:.85rem;color:#3b434d;margin-top:4px}
.pairs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.pair{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:6px;max-width:100%}
.pair-pics{display:grid;grid-template-columns:repeat(auto-fit,minmax(0,150px));gap:4px}
.pair-pics img{display:block;width:100%;max-width:150px;height:auto}
.score-plot{display:block;width:100%;max-width:800px;height:auto;background:#fff;border:1px solid #dde1e6;
border-radius:6px}
table{width:100%;border-collapse:collapse;table-layout:fixed;background:#fff;font-size:.88rem}
th,td{border:1px solid #dde1e6;padding:.3rem .45rem;text-align:left;vertical-align:top}
.col-at{width:32%}.col-event{width:22%}
"""


# --------------------------------------------------------------------------------------------- helpers


def _check_nonce(nonce: str) -> None:
    # A nonce lands in a header and an attribute: only base64/base64url characters, never a quote or `;`.
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 8-200 base64 / base64url characters (secrets.token_urlsafe)")


def _e(value: object) -> str:
    """Escape for HTML text and (double- or single-quoted) attributes alike; valid XML too, so SVG is safe."""
    return html.escape(str(value), quote=True)


def _c(v: float) -> str:
    """A coordinate: short, locale-free, never `nan`/`inf` (an invalid attribute would break the SVG)."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if math.isfinite(v) else "0"


def _num(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "n/a"


def _score(v: float | None) -> str:
    return "none (no face)" if v is None else _num(v)


def _seconds(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "?"
    return f"{t:.2f}".rstrip("0").rstrip(".") if t % 1 else f"{t:.0f}"


def _when(at: datetime) -> str:
    return at.isoformat(sep=" ", timespec="seconds")


def _subject_noun(doc: EvidenceDocument) -> str:
    return "video" if doc.subject == "decision" else "job"


def _data_uri(data: bytes) -> str:
    mime = "image/png" if data.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _picture_at(pics: Sequence[bytes], i: int) -> bytes:
    return pics[i] if 0 <= i < len(pics) else b""


def _clip_box(face: EvidenceFace, w: int, h: int) -> tuple[float, float, float, float] | None:
    if not all(math.isfinite(v) for v in face.box):
        return None
    x1, y1, x2, y2 = face.box
    x1, x2 = sorted((min(max(x1, 0.0), w), min(max(x2, 0.0), w)))
    y1, y2 = sorted((min(max(y1, 0.0), h), min(max(y2, 0.0), h)))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _level(score: float, review: float, flag: float) -> str:
    if math.isfinite(score) and score >= flag:
        return "flag"
    if math.isfinite(score) and score >= review:
        return "review"
    return "allow"


def _t_max(doc: EvidenceDocument) -> float:
    """The end of the time axis: the video's duration or the last sampled/kept frame (1 s when none)."""
    times = [p.time_s for p in doc.series] + [f.time_s for f in doc.frames] + [doc.media.duration_s or 0.0]
    t_max = max([t for t in times if math.isfinite(t)] + [0.0])
    return t_max if t_max > 0 else 1.0


def _runs(series: Iterable[SeriesPoint]) -> list[list[tuple[SeriesPoint, float]]]:
    """Consecutive points with a (finite) score; a point without one ends a run."""
    runs: list[list[tuple[SeriesPoint, float]]] = []
    current: list[tuple[SeriesPoint, float]] = []
    for p in series:
        if p.score is None or not math.isfinite(p.score) or not math.isfinite(p.time_s):
            if current:
                runs.append(current)
            current = []
        else:
            current.append((p, p.score))
    if current:
        runs.append(current)
    return runs


def _tick_step(t_max: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if t_max / step <= 8:
            return float(step)
    return float(10 ** math.ceil(math.log10(t_max / 8)))


# --------------------------------------------------------------------------------------------- PNG parts


def _canvas(w: int, h: int, colour: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    out = np.empty((h, w, 3), np.uint8)
    out[:] = colour
    return out


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only; anything else (and control characters) becomes `?`."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _put(
    img: npt.NDArray[np.uint8],
    text: str,
    org: tuple[int, int],
    scale: float,
    colour: tuple[int, int, int],
    thickness: int,
    max_w: int,
) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    text = _ascii(text)
    if cv2.getTextSize(text, font, scale, thickness)[0][0] > max_w:
        while text and cv2.getTextSize(text + "...", font, scale, thickness)[0][0] > max_w:
            text = text[:-1]
        text += "..."
    cv2.putText(img, text, org, font, scale, colour, thickness, cv2.LINE_AA)


def _decode(data: bytes) -> npt.NDArray[np.uint8] | None:
    if not data:
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else np.asarray(img, np.uint8)


def _fit(img: npt.NDArray[np.uint8] | None, w: int, h: int) -> npt.NDArray[np.uint8]:
    """`img` letterboxed into w x h (grey with a cross when there is no picture)."""
    out = _canvas(w, h, (235, 235, 235))
    if img is None:
        cv2.line(out, (0, 0), (w - 1, h - 1), (180, 180, 180), 1)
        cv2.line(out, (0, h - 1), (w - 1, 0), (180, 180, 180), 1)
        return out
    ih, iw = img.shape[:2]
    s = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out


def _frame_tile(
    frame: EvidenceFrame, data: bytes, tile_w: int, doc: EvidenceDocument
) -> npt.NDArray[np.uint8]:
    fw, fh = max(1, frame.width), max(1, frame.height)
    pic_h = min(max(1, round(tile_w * fh / fw)), 2 * tile_w)  # a very tall picture is letterboxed
    pic = _fit(_decode(data), tile_w, pic_h)
    s = min(tile_w / fw, pic_h / fh)  # as _fit scales it, so the boxes land on the faces
    ox, oy = (tile_w - fw * s) / 2, (pic_h - fh * s) / 2
    for face in frame.faces:
        box = _clip_box(face, fw, fh)
        if box is None:
            continue
        x1, x2 = round(ox + box[0] * s), round(ox + box[2] * s)
        y1, y2 = round(oy + box[1] * s), round(oy + box[3] * s)
        colour = _BGR[_level(face.score, doc.thresholds.review, doc.thresholds.flag)]
        cv2.rectangle(pic, (x1, y1), (x2, y2), colour, 2, cv2.LINE_AA)
        label = _ascii(f"#{face.track_id} {_num(face.score)}")
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = y1 - 4 if y1 - th - 6 > 0 else y1 + th + 4
        cv2.rectangle(pic, (x1, ty - th - 3), (x1 + tw + 4, ty + 3), colour, -1)
        cv2.putText(pic, label, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    tile = _canvas(tile_w, pic_h + 22, (255, 255, 255))
    tile[:pic_h] = pic
    _put(
        tile,
        f"{_seconds(frame.time_s)} s  frame {frame.index}  score {_score(frame.score)}",
        (2, pic_h + 16),
        0.45,
        (40, 40, 40),
        1,
        tile_w - 4,
    )
    return tile


def _plot_strip(doc: EvidenceDocument, w: int, h: int, pad: int) -> npt.NDArray[np.uint8]:
    """The score over time, drawn like the page's SVG plot (same gaps and thresholds)."""
    strip = _canvas(w, h, (255, 255, 255))
    x0, x1, y0, y1 = pad + 40, w - pad - 90, 8, h - 26
    cv2.rectangle(strip, (x0, y0), (x1, y1), (211, 202, 197), 1)
    t_max = _t_max(doc)

    def pt(t: float, v: float) -> tuple[int, int]:
        tx = x0 + (min(max(t, 0.0), t_max) / t_max) * (x1 - x0)
        return round(tx), round(y1 - min(max(v, 0.0), 1.0) * (y1 - y0))

    for v in (0.0, 1.0):
        _put(strip, f"{v:g}", (x0 - 22, pt(0, v)[1] + 5), 0.45, (90, 90, 90), 1, 30)
    for name, value in (("review", doc.thresholds.review), ("flag", doc.thresholds.flag)):
        if math.isfinite(value):
            yy = pt(0, value)[1]
            cv2.line(strip, (x0, yy), (x1, yy), _BGR[name], 1, cv2.LINE_AA)
            _put(strip, f"{name} {_num(value)}", (x1 + 4, yy + 5), 0.45, _BGR[name], 1, w - x1 - 6)
    for run in _runs(doc.series):
        pts = np.array([pt(p.time_s, s) for p, s in run], np.int32).reshape(-1, 1, 2)
        if len(run) == 1:
            cv2.circle(strip, tuple(int(c) for c in pts[0, 0]), 3, (145, 79, 29), -1, cv2.LINE_AA)
        else:
            cv2.polylines(strip, [pts], False, (145, 79, 29), 2, cv2.LINE_AA)
    _put(strip, "0 s", (x0 - 4, h - 8), 0.45, (90, 90, 90), 1, 60)
    _put(strip, f"{_seconds(t_max)} s  (score over time)", (x1 - 150, h - 8), 0.45, (90, 90, 90), 1, 240)
    return strip
