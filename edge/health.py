"""Health, statistics and Prometheus metrics over HTTP on the loopback interface.

How the daemon uses it::

    server = start_health_server(daemon.health_stats, enabled=cfg.health.enabled,
                                 host=cfg.health.host, port=cfg.health.port)
    ...
    if server is not None:
        server.close()

``daemon.health_stats`` is any callable returning a :class:`HealthStats`; it is called from the
server's threads, so it must return a consistent copy (build a new frozen record under a lock, or
keep one that the frame loop replaces whole). Endpoints:

- ``GET /health``: 200 ``{"status": "ok", ...}`` while frames flow (last one within ``stale_after``
  seconds), else 503 with ``"starting"`` (no frame yet) or ``"stalled"``.
- ``GET /stats``: everything in :class:`HealthStats` as JSON.
- ``GET /metrics``: the Prometheus text exposition format, names prefixed ``cryedge_`` and ending in
  their unit (seconds, as Prometheus prefers; ``_total`` for counters).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from edge.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765  # as edge.config.HealthConfig; loopback only


@dataclass(frozen=True)
class HealthStats:
    """A snapshot of the daemon's state; times are ``time.monotonic()`` seconds unless named ``_unix``."""

    started: float
    last_frame: float | None = None  # when the last frame went through the whole pipeline
    state: str = "starting"  # starting, running, reconnecting, stopping
    frames: int = 0
    fps: float = 0.0
    stage_ms: Mapping[str, float] = field(default_factory=dict)  # median ms per stage, e.g. "landmarks"
    inference_ms: float | None = None
    face_share: float | None = None  # share of recent frames with a face, 0..1
    source: str = ""
    source_reconnects: int = 0
    outbox_depth: int = 0  # events waiting on disk for the broker
    outbox_fault: str | None = None  # why events are kept in memory, not on disk (disk full, read-only)
    broker_connected: bool | None = None  # None: no broker configured
    crying: bool | None = None
    probability: float | None = None
    last_event: Mapping[str, Any] | None = None  # the last AlarmEvent as published (JSON-ready)
    last_event_unix: float | None = None
    model: str = ""


def health_document(stats: HealthStats, now: float, stale_after: float) -> tuple[int, dict[str, Any]]:
    """The ``/health`` answer: (HTTP status, JSON body). Healthy means a frame within ``stale_after``."""
    body: dict[str, Any] = {"state": stats.state, "uptime_s": round(now - stats.started, 3)}
    if stats.last_frame is None:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "starting", **body, "last_frame_age_s": None}
    age = now - stats.last_frame
    body["last_frame_age_s"] = round(age, 3)
    if age > stale_after:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "stalled", **body}
    return HTTPStatus.OK, {"status": "ok", **body}


def stats_document(stats: HealthStats, now: float) -> dict[str, Any]:
    """The ``/stats`` answer: the snapshot plus derived ages."""
    document = asdict(stats)
    document["stage_ms"] = dict(stats.stage_ms)
    document["uptime_s"] = round(now - stats.started, 3)
    document["last_frame_age_s"] = None if stats.last_frame is None else round(now - stats.last_frame, 3)
    del document["started"], document["last_frame"]  # monotonic clock values mean nothing to a reader
    return document


def metrics_text(stats: HealthStats, now: float) -> str:
    """The ``/metrics`` answer in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float | None]]) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        lines.append(f"# HELP cryedge_{name} {help_text}")
        lines.append(f"# TYPE cryedge_{name} {kind}")
        lines.extend(f"cryedge_{name}{labels} {_number(value)}" for labels, value in samples)

    def flag(value: bool | None) -> float | None:
        return None if value is None else float(value)

    state_names = ("starting", "running", "reconnecting", "stopping")
    metric(
        "up",
        "gauge",
        "1 while frames flow through the pipeline.",
        [("", 1.0 if stats.state == "running" and stats.last_frame is not None else 0.0)],
    )
    metric(
        "state",
        "gauge",
        "The daemon's state, one series per state.",
        [(f'{{state="{name}"}}', float(stats.state == name)) for name in state_names],
    )
    metric("uptime_seconds", "gauge", "Seconds since the daemon started.", [("", now - stats.started)])
    metric(
        "frames_processed_total",
        "counter",
        "Frames that went through the whole pipeline.",
        [("", float(stats.frames))],
    )
    metric("frames_per_second", "gauge", "Recent end-to-end frame rate.", [("", stats.fps)])
    metric(
        "last_frame_age_seconds",
        "gauge",
        "Seconds since the last processed frame.",
        [("", None if stats.last_frame is None else now - stats.last_frame)],
    )
    metric(
        "stage_duration_seconds",
        "gauge",
        "Median time a frame spends in each pipeline stage.",
        [(f'{{stage="{_label(stage)}"}}', ms / 1000) for stage, ms in sorted(stats.stage_ms.items())],
    )
    metric(
        "inference_duration_seconds",
        "gauge",
        "Median time of one model invocation.",
        [("", None if stats.inference_ms is None else stats.inference_ms / 1000)],
    )
    metric(
        "face_ratio", "gauge", "Share of recent frames in which a face was found.", [("", stats.face_share)]
    )
    metric(
        "source_reconnects_total",
        "counter",
        "Times the frame source was reopened.",
        [("", float(stats.source_reconnects))],
    )
    metric(
        "outbox_events",
        "gauge",
        "Events kept on disk until the broker takes them.",
        [("", float(stats.outbox_depth))],
    )
    metric(
        "broker_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        [("", flag(stats.broker_connected))],
    )
    metric("crying", "gauge", "1 while the alarm is ON.", [("", flag(stats.crying))])
    metric("cry_probability_ratio", "gauge", "The smoothed cry probability, 0..1.", [("", stats.probability)])
    metric(
        "last_event_timestamp_seconds",
        "gauge",
        "Unix time of the last cry start or end event.",
        [("", stats.last_event_unix)],
    )
    return "\n".join(lines) + "\n"


class HealthServer:
    """Serves the endpoints from its own thread until :meth:`close`."""

    def __init__(
        self,
        snapshot: Callable[[], HealthStats],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        stale_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.snapshot = snapshot
        self.stale_after = stale_after
        self.clock = clock
        try:
            self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        except OSError as error:
            raise ConfigError(
                f"health server cannot listen on {host}:{port} ({error.strerror}); "
                "set another [health] port, or enabled = false"
            ) from error
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        log.info("health endpoints on http://%s:%d/health, /stats, /metrics", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route not in ("/health", "/stats", "/metrics"):
            return _json(
                HTTPStatus.NOT_FOUND, {"error": "not found", "endpoints": ["/health", "/stats", "/metrics"]}
            )
        stats = self.snapshot()
        now = self.clock()
        if route == "/health":
            return _json(*health_document(stats, now, self.stale_after))
        if route == "/stats":
            return _json(HTTPStatus.OK, stats_document(stats, now))
        return HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", metrics_text(stats, now).encode()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_health_server(
    snapshot: Callable[[], HealthStats],
    *,
    enabled: bool = True,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    stale_after: float = 5.0,
) -> HealthServer | None:
    """A running :class:`HealthServer`, or None when switched off."""
    if not enabled:
        return None
    return HealthServer(snapshot, host=host, port=port, stale_after=stale_after)


def _handler_for(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cryedge"

        def do_GET(self) -> None:
            try:
                status, content_type, body = server.answer(self.path)
            except Exception:  # a broken snapshot must not kill the server thread
                log.exception("health snapshot failed")
                status, content_type, body = _json(
                    HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "snapshot failed"}
                )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:
            log.debug("health %s: " + format, self.client_address[0], *args)

    return Handler


def _json(status: int, document: Mapping[str, Any]) -> tuple[int, str, bytes]:
    return int(status), "application/json", (json.dumps(document, sort_keys=True) + "\n").encode()


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
