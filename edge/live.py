"""The live view: what the camera sees, with its points, and the last minutes of the alarm, over HTTP.

Mounted on the health server (``edge.health``) under ``/live`` when ``[live] enabled = true``; served on
``[health] host`` (loopback unless configured) and port. Routes, all GET, none that changes anything:

- ``/live``: a page (no script or style from anywhere else) with the current frame at ``fps``, the face
  and body points, "face / body / light" indicators, and a chart of the probability and the alarm.
- ``/live/frame.jpg``: the current frame as JPEG; ``/live/data.json``: the indicators and the history.
- ``/live/stream.mjpeg``: ``multipart/x-mixed-replace`` JPEGs at ``fps``, for Home Assistant's MJPEG camera.

Protection: every route wants the token (``[live]``; never in a URL, so never in a log), given as
``Authorization: Bearer TOKEN``, or as the password of HTTP basic auth (any user name: browsers and
Home Assistant's MJPEG integration speak it), or as the session cookie the page sets after one of
those. Each client address may make ``rate`` requests a second (429 beyond), at most ``max_viewers``
watch at once (503 beyond; a stream's viewer that takes none of it for the server's idle timeout is closed
by ``edge.health``, and its place freed), and frames are encoded only while someone asks for them, at most ``fps``
a second whatever the number of viewers, on the viewers' threads. The frame loop only swaps a
reference (``offer``). No picture is written to disk (see ``edge.health``'s buffer limits).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from edge.pictures import Look, encode_jpeg, render

COOKIE = "cryedge_live"
SESSION_SECONDS = 3600.0
MAX_SESSIONS = 16
VIEWER_IDLE_SECONDS = 5.0  # a page that fetched no frame for this long no longer holds a viewer's place
HISTORY_STEP = 0.5  # seconds between points of the chart
BOUNDARY = "cryedgeframe"
REALM = 'Basic realm="cryedge live view", charset="UTF-8"'
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]


class RateLimit:
    """A token bucket per client address: ``rate`` requests a second, bursts of ``burst``; bounded memory."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic, clients: int = 64):
        self.rate, self.burst, self.clock, self.clients = rate, burst, clock, clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)  # re-inserted: the newest last
            while len(self._buckets) > self.clients:
                del self._buckets[next(iter(self._buckets))]
            return allowed


class LiveView:
    """The live view's state (the newest frame, the history) and its WSGI application."""

    def __init__(self, config, too_dark_below: float = 12.0, clock: Callable[[], float] = time.monotonic):
        if config.token is None:
            raise ValueError("the live view needs a token (edge.config resolves it)")
        self._token = config.token.get_secret_value().encode()
        self.fps = config.fps
        self.max_viewers = config.max_viewers
        self.quality = config.quality
        self.history_seconds = config.history_seconds
        self.too_dark_below = too_dark_below
        self.look = Look(landmarks=True, probability=False, face="show", max_width=config.max_width,
                         max_height=config.max_height)
        self.clock = clock
        # per client: a page polls a frame at fps and the data once a second; twice that, and a burst to load
        self.rate_limit = RateLimit(rate=2 * self.fps + 4, burst=2 * self.fps + 10, clock=clock)
        self._latest: tuple | None = None  # (image, FrameResult, AlarmState, t), replaced whole by offer()
        self._history: deque[tuple[float, float | None, bool]] = deque(
            maxlen=int(math.ceil(self.history_seconds / HISTORY_STEP)) + 1)
        self._history_lock = threading.Lock()
        self._next_sample = -math.inf
        self._encoding = threading.Lock()
        self._jpeg: tuple[object, float, bytes] | None = None  # (the frame it shows, when encoded, bytes)
        self._viewers: dict[object, float] = {}  # viewer -> last seen; a stream's entry is kept until it ends
        self._viewers_lock = threading.Lock()
        self._sessions: dict[str, float] = {}  # session cookie -> expiry
        self._closed = threading.Event()
        self.encoded = 0  # frames encoded, for tests and benchmarks

    # --- the frame loop's side: no work, only references

    def offer(self, image, result, state) -> None:
        """The newest frame, its result and the alarm state; called by the frame loop for every frame."""
        now = self.clock()
        self._latest = (image, result, state, now)
        if result.score is not None and now >= self._next_sample:
            self._next_sample = now + HISTORY_STEP
            probability = state.probability if math.isfinite(state.probability) else None
            with self._history_lock:
                self._history.append((now, probability, bool(state.crying)))

    # --- what viewers get

    def frame_jpeg(self) -> bytes | None:
        """The newest frame drawn and encoded; one encoding serves every viewer for ``1/fps`` seconds."""
        latest = self._latest
        if latest is None:
            return None
        with self._encoding:
            cached = self._jpeg
            now = self.clock()
            if cached is not None and (cached[0] is latest or now - cached[1] < 1.0 / self.fps):
                return cached[2]
            image, result, _, _ = latest
            data = encode_jpeg(render(image, result.landmarks, self.look), self.quality)
            self._jpeg = (latest, now, data)
            self.encoded += 1
            return data

    def data(self) -> dict[str, Any]:
        """The indicators and the chart's points (seconds before now, smoothed probability, crying)."""
        now = self.clock()
        with self._history_lock:
            history = [(round(t - now, 2), None if p is None else round(p, 3), crying)
                       for t, p, crying in self._history if now - t <= self.history_seconds]
        document: dict[str, Any] = {"history_seconds": self.history_seconds, "fps": self.fps, "history": history,
                                    "frame": False}
        latest = self._latest
        if latest is not None:
            _, result, state, t = latest
            dark = result.brightness is not None and result.brightness < self.too_dark_below
            document.update(
                frame=True, frame_age_s=round(now - t, 3), face=bool(result.face_seen), body=bool(result.body_seen),
                too_dark=bool(dark), brightness=None if result.brightness is None else round(result.brightness, 1),
                status=result.score.status if result.score is not None else "starting",
                probability=state.probability if math.isfinite(state.probability) else None,
                crying=bool(state.crying))
        return document

    def close(self) -> None:
        """End every stream (the server waits for its threads)."""
        self._closed.set()

    # --- viewers and access

    def _take_place(self, viewer: object, stream: bool = False) -> bool:
        now = self.clock()
        with self._viewers_lock:
            for other, seen in list(self._viewers.items()):
                if seen != math.inf and now - seen > VIEWER_IDLE_SECONDS:
                    del self._viewers[other]
            if viewer not in self._viewers and len(self._viewers) >= self.max_viewers:
                return False
            self._viewers[viewer] = math.inf if stream else now
            return True

    def _leave(self, viewer: object) -> None:
        with self._viewers_lock:
            self._viewers.pop(viewer, None)

    @property
    def viewers(self) -> int:
        with self._viewers_lock:
            now = self.clock()
            return sum(1 for seen in self._viewers.values() if seen == math.inf or now - seen <= VIEWER_IDLE_SECONDS)

    def _authorized(self, environ: dict) -> tuple[bool, bool]:
        """(whether the request may see the picture, whether it proved the token itself, not by cookie)."""
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        candidate = None
        if scheme.lower() == "bearer":
            candidate = value.strip().encode()
        elif scheme.lower() == "basic":
            try:
                candidate = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                candidate = None
        if candidate is not None and hmac.compare_digest(candidate, self._token):
            return True, True
        session = self._cookie(environ)
        if session is not None:
            now = self.clock()
            with self._viewers_lock:
                expiry = self._sessions.get(session)
                return expiry is not None and now < expiry, False
        return False, False

    @staticmethod
    def _cookie(environ: dict) -> str | None:
        """The session cookie's value, read in one pass: not by ``http.cookies``, whose unquoting takes time
        quadratic in a quoted value's backslashes (CVE-2024-7592; Python 3.11.7 has it): a 60 KiB ``Cookie`` header
        from anyone on the port, token or not, held the GIL for seconds a request and the cry's alert came 23 s late.
        The session is ``secrets.token_urlsafe``: no quotes, no escapes, nothing to unquote."""
        for pair in environ.get("HTTP_COOKIE", "").split(";"):
            name, _, value = pair.partition("=")
            if name.strip() == COOKIE:
                return value.strip()
        return None

    def _new_session(self) -> str:
        session = secrets.token_urlsafe(24)
        now = self.clock()
        with self._viewers_lock:
            for old, expiry in list(self._sessions.items()):
                if expiry <= now:
                    del self._sessions[old]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session] = now + SESSION_SECONDS
        return session

    # --- WSGI

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes] | list[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        client = environ.get("REMOTE_ADDR", "")

        def answer(status: int, content_type: str, body: bytes, *extra: tuple[str, str]) -> list[bytes]:
            headers = [*SECURITY_HEADERS, *extra, ("Content-Type", content_type), ("Content-Length", str(len(body)))]
            start_response(f"{int(status)} {HTTPStatus(status).phrase}", headers)
            return [] if method == "HEAD" else [body]

        def error(status: int, message: str, *extra: tuple[str, str]) -> list[bytes]:
            body = json.dumps({"error": message}).encode()
            return answer(status, "application/json", body, *extra)

        if not self.rate_limit.allow(client):
            return error(HTTPStatus.TOO_MANY_REQUESTS, "too many requests", ("Retry-After", "1"))
        if method not in ("GET", "HEAD"):
            return error(HTTPStatus.METHOD_NOT_ALLOWED, "the live view only shows: GET", ("Allow", "GET, HEAD"))
        allowed, by_token = self._authorized(environ)
        if not allowed:
            return error(HTTPStatus.UNAUTHORIZED, "the live view needs its token", ("WWW-Authenticate", REALM))
        if self._closed.is_set():
            return error(HTTPStatus.SERVICE_UNAVAILABLE, "stopping")
        if path in ("/live", "/live/"):
            extra = []
            if by_token:  # the page's own requests then carry a cookie, not the token
                extra.append(("Set-Cookie", f"{COOKIE}={self._new_session()}; Path=/live; HttpOnly; "
                                            f"SameSite=Strict; Max-Age={int(SESSION_SECONDS)}"))
            return answer(HTTPStatus.OK, "text/html; charset=utf-8", page(self.fps).encode(), *extra,
                          ("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        if path == "/live/data.json":
            return answer(HTTPStatus.OK, "application/json", json.dumps(self.data(), separators=(",", ":")).encode())
        if path == "/live/frame.jpg":
            if not self._take_place(client):
                return error(HTTPStatus.SERVICE_UNAVAILABLE, f"{self.max_viewers} viewers already watch",
                             ("Retry-After", "5"))
            jpeg = self.frame_jpeg()
            if jpeg is None:
                return error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet", ("Retry-After", "1"))
            return answer(HTTPStatus.OK, "image/jpeg", jpeg)
        if path == "/live/stream.mjpeg":
            viewer = object()
            if not self._take_place(viewer, stream=True):
                return error(HTTPStatus.SERVICE_UNAVAILABLE, f"{self.max_viewers} viewers already watch",
                             ("Retry-After", "5"))
            start_response("200 OK", [*SECURITY_HEADERS, ("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")])
            if method == "HEAD":
                self._leave(viewer)
                return []
            return self._stream(viewer)
        return error(HTTPStatus.NOT_FOUND, "not found: /live, /live/frame.jpg, /live/data.json, /live/stream.mjpeg")

    def _stream(self, viewer: object) -> Iterator[bytes]:
        """JPEG parts at ``fps`` until the viewer goes (the server closes this generator) or the view closes."""
        try:
            sent, sent_at = None, -math.inf
            while not self._closed.is_set():
                jpeg = self.frame_jpeg()
                # a frame again every few seconds even when nothing new came: only a write tells that a viewer went
                if jpeg is not None and (jpeg is not sent or self.clock() - sent_at >= VIEWER_IDLE_SECONDS / 2):
                    sent, sent_at = jpeg, self.clock()
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                           + jpeg + b"\r\n")
                self._closed.wait(1.0 / self.fps)
        finally:
            self._leave(viewer)


CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self' blob:; connect-src 'self'; "
                           "script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'")
CHART_COLOUR = "#1e90ff"  # the probability line; tests look for it in a screenshot
ALARM_COLOUR = "rgba(220, 40, 40, 0.35)"


def page(fps: float) -> str:
    """The live page: plain HTML, an inline script that polls the frame and the data, a canvas chart."""
    return PAGE.replace("__FPS__", f"{fps:g}").replace("__CHART__", CHART_COLOUR).replace("__ALARM__", ALARM_COLOUR)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cryedge live view</title>
<style>
body { font-family: sans-serif; margin: 12px; background: #f4f4f4; color: #222; }
#frame { display: block; width: 640px; max-width: 100%; aspect-ratio: 4 / 3; background: #333; object-fit: contain; }
.row { display: flex; gap: 8px; margin: 8px 0; flex-wrap: wrap; }
.tag { padding: 3px 10px; border-radius: 12px; background: #ccc; font-size: 14px; }
.yes { background: #bfe8bf; } .no { background: #f3c6c6; } .crying { background: #e74c3c; color: #fff; }
#chart { display: block; width: 640px; max-width: 100%; height: 160px; background: #fff; border: 1px solid #bbb; }
</style></head>
<body>
<img id="frame" alt="what the camera sees">
<div class="row">
  <span id="face" class="tag">face</span><span id="body" class="tag">body</span>
  <span id="light" class="tag">light</span><span id="alarm" class="tag">alarm</span>
  <span id="status" class="tag">starting</span>
</div>
<canvas id="chart" width="640" height="160"></canvas>
<div id="note" style="font-size: 12px; color: #666">cry probability (line) and alarm (red), the newest on the right</div>
<script>
"use strict";
const FPS = __FPS__;
const base = location.origin;  // never the page's URL: it may carry a user name and password
const img = document.getElementById("frame");
function tag(id, text, cls) { const e = document.getElementById(id); e.textContent = text; e.className = "tag " + cls; }
async function nextFrame() {
  try {
    const r = await fetch(base + "/live/frame.jpg", {cache: "no-store", credentials: "same-origin"});
    if (r.ok) {
      const url = URL.createObjectURL(await r.blob());
      img.onload = () => URL.revokeObjectURL(url);
      img.src = url;
    }
  } catch (e) {}
  setTimeout(nextFrame, 1000 / FPS);
}
function draw(d) {
  const c = document.getElementById("chart"), g = c.getContext("2d"), w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  const span = d.history_seconds, x = t => w + (t / span) * w, y = p => h - 4 - p * (h - 8);
  g.strokeStyle = "#ddd"; g.lineWidth = 1;
  for (const p of [0.25, 0.5, 0.75]) { g.beginPath(); g.moveTo(0, y(p)); g.lineTo(w, y(p)); g.stroke(); }
  const pts = d.history;
  g.fillStyle = "__ALARM__";  // one band from the first crying point to the next calm one (or now)
  let from = null;
  for (let i = 0; i <= pts.length; i++) {
    const crying = i < pts.length && pts[i][2];
    if (crying && from === null) from = pts[i][0];
    if (!crying && from !== null) {
      const to = i < pts.length ? pts[i][0] : 0;
      g.fillRect(x(from), 0, Math.max(1, x(to) - x(from)), h);
      from = null;
    }
  }
  g.fillStyle = "#888"; g.font = "11px sans-serif";
  g.fillText("100%", 4, 14); g.fillText("50%", 4, y(0.5) - 3); g.fillText("-" + span + " s", 4, h - 6);
  g.strokeStyle = "__CHART__"; g.lineWidth = 3; g.beginPath();
  let drawing = false;
  for (const [t, p] of pts) {
    if (p === null) { drawing = false; continue; }
    if (drawing) g.lineTo(x(t), y(p)); else g.moveTo(x(t), y(p));
    drawing = true;
  }
  g.stroke();
}
async function nextData() {
  try {
    const r = await fetch(base + "/live/data.json", {cache: "no-store", credentials: "same-origin"});
    if (r.ok) {
      const d = await r.json();
      if (d.frame) {
        tag("face", d.face ? "face visible" : "no face", d.face ? "yes" : "no");
        tag("body", d.body ? "body visible" : "no body", d.body ? "yes" : "no");
        tag("light", d.too_dark ? "too dark" : "light ok", d.too_dark ? "no" : "yes");
        tag("alarm", d.crying ? "CRYING" : "calm", d.crying ? "crying" : "yes");
        const p = d.probability === null ? "-" : Math.round(d.probability * 100) + "%";
        tag("status", d.status + ", p " + p, d.status === "ok" ? "yes" : "no");
        if (d.frame_age_s > 3) tag("status", "no new frame for " + Math.round(d.frame_age_s) + " s", "no");
      }
      draw(d);
    }
  } catch (e) {}
  setTimeout(nextData, 1000);
}
nextFrame(); nextData();
</script>
</body></html>
"""
