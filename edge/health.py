"""Health, statistics and Prometheus metrics over HTTP, loopback by default, from a bounded server.

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
  seconds), else 503 with ``"starting"`` (no frame yet), ``"reconnecting"`` (the camera or stream is
  gone and being reopened: the service is alive but sees nothing, so a load balancer or monitor must
  not count it as serving) or ``"stalled"``. With hearing on, ``"audio"`` says what the microphone
  hears (``ok``, ``no_sound_device``, ``no_sound``, ``model_error``). With no camera (``[source] type = "none"``) the
  microphone is the source: its scores are the "frames", its reopening is ``"reconnecting"``.
  One rule for both senses (:func:`sense_problems`): a configured sense that does not judge (its source
  gone, stalled, or its model failing for longer than ``stale_after``) is 200 ``"degraded"`` while
  another sense the alarm follows still judges, else 503 with why the first sense does not.
- ``GET /stats``: everything in :class:`HealthStats` as JSON.
- ``GET /metrics``: Prometheus exposition by ``prometheus_client`` (text 0.0.4, or OpenMetrics when
  the scraper asks for it), names prefixed ``cryedge_`` and ending in their unit.

The HTTP layer is waitress (the README says why, with figures): one I/O thread owns every socket, a
few worker threads answer requests, so the live view of a later issue mounts its WSGI routes on
:class:`HttpServer` too. Any local user can connect to the port, so it is bounded: at most
``max_connections`` sockets (file descriptors the outbox and MQTT need too), an idle connection is
closed after ``idle_timeout`` seconds, and when all are taken the oldest one without a request in
progress makes room for the newcomer (idle keep-alive connections are the first to go, as in
Apache's event MPM); with none idle the newcomer gets a 503 at once rather than waiting in the
kernel's queue. A connection whose client has taken none of the bytes waiting for it for
``idle_timeout`` seconds is closed too, with a request in progress or not (a live viewer that stopped
reading: waitress has no write timeout).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Self

from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from edge.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765  # as edge.config.HealthConfig; loopback only
ENDPOINTS = ("/health", "/stats", "/metrics")
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 5  # seconds; waitress counts whole seconds
THREADS = 2
# waitress moves a response buffer above outbuf_overflow to a temporary file; a writer blocks at the
# high watermark first, so nothing served (a picture of the nursery, later) is ever written to disk.
OUTBUF_HIGH_WATERMARK = 512 * 1024
OUTBUF_OVERFLOW = 2 * OUTBUF_HIGH_WATERMARK
TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64, Linux 4.1+) in struct tcp_info

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


@dataclass(frozen=True)
class ModelFault:
    """A model that fails at run time (LiteRT's invoke errors, scores that are not numbers), while it does."""

    model: str  # the model card's name
    error: str  # what it said last
    since: float  # time.monotonic() of its first failure since it last answered


@dataclass(frozen=True)
class HealthStats:
    """A snapshot of the daemon's state; times are ``time.monotonic()`` seconds unless named ``_unix``."""

    started: float
    last_frame: float | None = None  # when the last frame went through the whole pipeline
    state: str = "starting"  # starting, running, reconnecting, stopping
    frames: int = 0
    fps: float | None = 0.0  # None: no camera
    stage_ms: Mapping[str, float] = field(default_factory=dict)  # median ms per stage, e.g. "landmarks"
    inference_ms: float | None = None
    face_share: float | None = None  # share of recent frames with a face, 0..1
    source: str = ""
    source_state: str = ""  # open, reconnecting, ended, closed
    source_reconnects: int = 0  # reopen attempts
    outbox_depth: int = 0  # events waiting on disk for the broker
    outbox_fault: str | None = None  # why events are not kept on disk (disk full, read-only)
    broker_connected: bool | None = None  # None: no broker configured
    # with [snapshot] and a broker (else None): pictures sent, pictures not sent (dropped by a busy encoder, failed, or
    # replaced by a newer one before the broker took them: a slow link, the broker away), and whether the pictures'
    # own connection is up
    snapshots_sent: int | None = None
    snapshots_dropped: int | None = None
    snapshot_connected: bool | None = None
    crying: bool | None = None
    probability: float | None = None
    last_event: Mapping[str, Any] | None = None  # the last AlarmEvent as published (JSON-ready)
    last_event_unix: float | None = None
    model: str = ""
    # with hearing: {"source", "state", "status", "reconnects", "overruns"} of the microphone or sound track
    audio: Mapping[str, Any] | None = None
    model_faults: Mapping[str, ModelFault] = field(default_factory=dict)  # "vision", "audio": the failing models
    alarm_follows: tuple[str, ...] = ()  # the senses the fused alarm decides on ("vision", "audio")
    last_heard: float | None = None  # with a camera and hearing: when the audio model last judged sound


STATES = ("starting", "running", "reconnecting", "stopping")
HEALTH_STATUSES = ("ok", "degraded", "starting", "reconnecting", "stalled", "model_error")  # /health's "status"
SAID = {"vision": "picture", "audio": "sound"}


def health_document(stats: HealthStats, now: float, stale_after: float,
                    problems: Mapping[str, str | None] | None = None) -> tuple[int, dict[str, Any]]:
    """The ``/health`` answer: (HTTP status, JSON body); the rule is :func:`sense_problems`'s, one for both senses.

    200 ``"ok"`` while every configured sense judges; 200 ``"degraded"`` while one does not and another the alarm
    follows still does; 503 with why the camera (with no camera the sound) does not judge when none the alarm
    follows does. With two senses a failing one is named in ``"not_judged"``, with ``"reason"`` and
    ``"alarm_follows"`` (the senses that can still raise the alarm). ``problems``: the snapshot's
    :func:`sense_problems` when the caller has them already (``/metrics`` says both)."""
    body: dict[str, Any] = {"state": stats.state, "uptime_s": round(now - stats.started, 3)}
    age = None if stats.last_frame is None else now - stats.last_frame
    body["last_frame_age_s"] = None if age is None else round(age, 3)
    if stats.audio is not None:
        body["audio"] = stats.audio["status"]
    if problems is None:
        problems = sense_problems(stats, now, stale_after)
    failing = {sense: why for sense, why in problems.items() if why is not None}
    if not failing:
        return HTTPStatus.OK, {"status": "ok", **body}
    follows = [sense for sense in stats.alarm_follows if sense in problems and problems[sense] is None]
    sense = next(iter(failing))  # the main sense first (sense_problems' order)
    said = _problem_fields(stats, now, failing, follows) if len(problems) > 1 or "model_error" in failing.values() else {}
    if failing.get(next(iter(problems))) == "reconnecting":
        said["source_reconnects"] = stats.source_reconnects
    if follows:
        return HTTPStatus.OK, {"status": "degraded", **body, **said}
    return HTTPStatus.SERVICE_UNAVAILABLE, {"status": failing[sense], **body, **said}


def sense_problems(stats: HealthStats, now: float, stale_after: float) -> dict[str, str | None]:
    """Each configured sense, the main one first (the camera; with no camera the sound): None while it judges,
    else why not: ``reconnecting`` (its source is gone and reopened), ``model_error`` (its model has failed for
    longer than ``stale_after``), ``starting`` (nothing judged yet), ``stalled`` (nothing for ``stale_after``).

    The main sense judges while its frames (with no camera, judged sound) come; the sound next to a camera while
    its model judged sound within ``stale_after`` (``last_heard``), with as long after the start to begin."""
    faults = {sense for sense, fault in stats.model_faults.items() if now - fault.since > stale_after}
    main = "vision" if stats.fps is not None else "audio"
    problems = {main: _problem(stats.state == "reconnecting", main in faults, stats.last_frame, now, stale_after)}
    if main == "vision" and stats.audio is not None:
        heard = stats.last_heard
        if heard is None and now - stats.started <= stale_after:
            heard = stats.started  # its first window is not due yet
        problems["audio"] = _problem(stats.audio.get("state") == "reopening", "audio" in faults, heard, now,
                                     stale_after)
    return problems


def _problem(reopening: bool, failing_model: bool, last: float | None, now: float, stale_after: float) -> str | None:
    if reopening:
        return "reconnecting"
    if failing_model:
        return "model_error"
    if last is None:
        return "starting"
    return "stalled" if now - last > stale_after else None


def _problem_fields(stats: HealthStats, now: float, failing: Mapping[str, str],
                    follows: list[str]) -> dict[str, Any]:
    """What /health says of the senses that do not judge: which, why in a sentence, and what can still alarm."""
    sentences = []
    for sense, why in failing.items():
        fault = stats.model_faults.get(sense)
        if why == "model_error" and fault is not None:
            sentences.append(f"the {sense} model {fault.model} has failed for {now - fault.since:.0f} s "
                             f"({fault.error}): its {'pictures are' if sense == 'vision' else 'sound is'} not judged")
            continue
        if sense == "vision":
            what = f"the camera {stats.source} is {why}"
        else:  # with no camera the microphone is the source
            heard = stats.audio or {}
            what = f"the microphone {heard.get('source', stats.source)} is {why} ({heard.get('status', why)})"
        sentences.append(f"{what}: its {SAID[sense]} is not judged")
    also = f"the {' and the '.join(SAID[other] for other in follows)} can still raise the alarm" if follows \
        else "nothing can raise the alarm"
    said: dict[str, Any] = {"not_judged": dict(failing), "reason": "; ".join([*sentences, also]),
                            "alarm_follows": follows}
    model = next((sense for sense, why in failing.items() if why == "model_error"), None)
    return {"model_error": model, **said} if model is not None else said


def stats_document(stats: HealthStats, now: float) -> dict[str, Any]:
    """The ``/stats`` answer: the snapshot plus derived ages."""
    document = asdict(stats)
    document["stage_ms"] = dict(stats.stage_ms)
    document["uptime_s"] = round(now - stats.started, 3)
    document["last_frame_age_s"] = None if stats.last_frame is None else round(now - stats.last_frame, 3)
    del document["started"], document["last_frame"], document["last_heard"]  # monotonic clock values mean nothing
    return document


def metric_families(stats: HealthStats, now: float, stale_after: float = 5.0) -> list[Metric]:
    """The ``/metrics`` families for one snapshot; what is not known yet (None) is left out.

    ``cryedge_health_status`` and ``cryedge_sense_judging`` say what ``/health`` says (``stale_after`` is its)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: list[Metric] = []

    def gauge(name: str, help_text: str, value: float | bool | None) -> None:
        if value is not None:
            families.append(GaugeMetricFamily(f"cryedge_{name}", help_text, value=float(value)))

    def counter(name: str, help_text: str, value: float) -> None:  # exposed as <name>_total
        families.append(CounterMetricFamily(f"cryedge_{name}", help_text, value=float(value)))

    def labelled(name: str, help_text: str, label: str, values: Iterable[tuple[str, float]]) -> None:
        family = GaugeMetricFamily(f"cryedge_{name}", help_text, labels=[label])
        for key, value in values:
            family.add_metric([key], float(value))
        if family.samples:
            families.append(family)

    gauge("up", "1 while frames flow through the pipeline.", stats.state == "running" and stats.last_frame is not None)
    labelled("state", "The daemon's state, one series per state.", "state",
             ((name, stats.state == name) for name in STATES))
    problems = sense_problems(stats, now, stale_after)
    status = health_document(stats, now, stale_after, problems)[1]["status"]
    labelled("health_status", "The /health status, one series per status: 1 for the current one.", "status",
             ((name, status == name) for name in HEALTH_STATUSES))
    labelled("sense_judging", "1 while the sense's source delivers and its model judges it, as /health says.",
             "sense", ((sense, why is None) for sense, why in problems.items()))
    gauge("uptime_seconds", "Seconds since the daemon started.", now - stats.started)
    counter("frames_processed", "Frames that went through the whole pipeline.", stats.frames)
    gauge("frames_per_second", "Recent end-to-end frame rate.", stats.fps)
    gauge("last_frame_age_seconds", "Seconds since the last processed frame.",
          None if stats.last_frame is None else now - stats.last_frame)
    labelled("stage_duration_seconds", "Median time a frame spends in each pipeline stage.", "stage",
             ((stage, ms / 1000) for stage, ms in sorted(stats.stage_ms.items())))
    gauge("inference_duration_seconds", "Median time of one model invocation.",
          None if stats.inference_ms is None else stats.inference_ms / 1000)
    gauge("face_ratio", "Share of recent frames in which a face was found.", stats.face_share)
    gauge("source_connected", "1 while the camera, stream or file is open.",
          stats.source_state == "open" if stats.source_state else None)
    counter("source_reconnects", "Times the frame source was reopened.", stats.source_reconnects)
    gauge("outbox_events", "Events kept on disk until the broker takes them.", stats.outbox_depth)
    gauge("outbox_fault", "1 while the outbox cannot write to disk (events are kept in memory).",
          stats.outbox_fault is not None)
    gauge("broker_connected", "1 while connected to the MQTT broker.", stats.broker_connected)
    if stats.snapshots_sent is not None:
        counter("snapshots_sent", "Cry pictures handed to the broker.", stats.snapshots_sent)
        counter("snapshots_dropped", "Cry pictures not sent: dropped by a busy encoder, failed, or replaced by a "
                "newer one before the broker took them.",
                stats.snapshots_dropped or 0)
    gauge("snapshot_connected", "1 while the pictures' own MQTT connection is up.", stats.snapshot_connected)
    if stats.audio is not None:
        gauge("audio_up", "1 while the microphone or sound track is heard.", stats.audio["status"] == "ok")
        counter("audio_reconnects", "Times the sound source was reopened.", stats.audio["reconnects"])
    gauge("crying", "1 while the alarm is ON.", stats.crying)
    gauge("cry_probability_ratio", "The smoothed cry probability, 0..1.", stats.probability)
    gauge("last_event_timestamp_seconds", "Unix time of the last cry start or end event.", stats.last_event_unix)
    return families


class HealthCollector:
    """A ``prometheus_client`` collector that reads one :class:`HealthStats` snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], HealthStats], clock: Callable[[], float] = time.monotonic,
                 stale_after: float = 5.0):
        self.snapshot, self.clock, self.stale_after = snapshot, clock, stale_after

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.snapshot(), self.clock(), self.stale_after)


class HealthApp:
    """The WSGI application behind ``/health``, ``/stats`` and ``/metrics``."""

    def __init__(self, snapshot: Callable[[], HealthStats], stale_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, live: WSGIApp | None = None):
        self.snapshot, self.stale_after, self.clock = snapshot, stale_after, clock
        self.live = live  # the live view's WSGI app (edge.live), mounted on /live
        self._registry: CollectorRegistry | None = None
        self._registry_lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry:
        """The server's own registry, not prometheus_client's global one: nothing at module level.

        Made at the first scrape: a monitor nobody scrapes does not load prometheus_client (0.9 MiB).
        """
        with self._registry_lock:
            if self._registry is None:
                from prometheus_client import CollectorRegistry

                registry = CollectorRegistry(auto_describe=False)
                registry.register(HealthCollector(self.snapshot, self.clock, self.stale_after))
                self._registry = registry
            return self._registry

    def answer(self, path: str, accept: str = "") -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route not in ENDPOINTS:
            return _json(HTTPStatus.NOT_FOUND, {"error": "not found", "endpoints": list(ENDPOINTS)})
        if route == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encode, content_type = choose_encoder(accept)
            return HTTPStatus.OK, content_type, encode(self.registry)
        stats, now = self.snapshot(), self.clock()
        if route == "/health":
            return _json(*health_document(stats, now, self.stale_after))
        return _json(HTTPStatus.OK, stats_document(stats, now))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.live is not None and (path == "/live" or path.startswith("/live/")):
            return self.live(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        headers = [("Cache-Control", "no-store")]
        if method not in ("GET", "HEAD"):
            status, content_type, body = _json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET"})
            headers.append(("Allow", "GET, HEAD"))
        else:
            try:
                status, content_type, body = self.answer(environ.get("PATH_INFO", ""), environ.get("HTTP_ACCEPT", ""))
            except Exception:  # noqa: BLE001 - a bug of one page: a 500 and one line (edge.logs.OneLineErrors; the
                # traceback at -vv); the monitor and its alerts go on (exit 70 would restart it at every probe)
                log.exception("health: %s failed", environ.get("PATH_INFO", ""))
                status, content_type, body = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "snapshot failed"})
        headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response(f"{int(status)} {HTTPStatus(status).phrase}", headers)
        return [] if method == "HEAD" else [body]


class HttpServer:
    """Serves a WSGI application from its own threads until :meth:`close`, with bounded connections."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: int = IDLE_TIMEOUT, threads: int = THREADS,
                 name: str = "http"):
        # waitress starts its worker threads and its wake-up pipe before it binds: made here, they
        # can be stopped when the bind fails (a taken port), instead of living on in the process
        channels: dict = {}
        workers = ThreadedTaskDispatcher()
        workers.queue_logger = _Backlog(threads)
        workers.set_thread_count(threads)
        try:
            self._server = _BoundedServer(
                app, map=channels, dispatcher=workers,
                host=host, port=port, threads=threads, connection_limit=max_connections,
                channel_timeout=idle_timeout, cleanup_interval=1,
                # poll, not select: the daemon's descriptors may number above select's 1024
                asyncore_use_poll=True, outbuf_high_watermark=OUTBUF_HIGH_WATERMARK,
                outbuf_overflow=OUTBUF_OVERFLOW, max_request_body_size=64 * 1024, expose_tracebacks=False,
                ident="cryedge")
        except (OSError, ValueError) as error:
            workers.shutdown(timeout=2)
            for channel in list(channels.values()):
                channel.close()
            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"{name} server cannot listen on {host}:{port} ({reason}); "
                              "set another [health] port, or enabled = false") from error
        # waitress counts a worker busy from its start until it first waits for a request: a request read before then
        # (the first probe, on a loaded machine) was said to wait for the workers while none answered anything
        _until_idle(workers, timeout=5.0)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return str(self._server.effective_host), int(self._server.effective_port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def connections(self) -> int:
        """Open client connections now."""
        return len(self._server.active_channels)

    def close(self) -> None:
        """Stop the workers, then close the listening socket and every connection, and the I/O thread.

        Workers first: one still answering when the wake-up pipe closed failed writing to it, and waitress logged
        the error with its traceback (a client asking while the daemon stopped)."""
        self._server.task_dispatcher.shutdown(timeout=2)
        if self._thread.is_alive():
            # Sockets belong to the I/O thread: close them there; its loop ends when none is left.
            try:
                self._server.trigger.pull_trigger(self._server.close_all)
            except OSError:
                # a worker's own pull (a streaming response) woke the I/O thread, which ran close_all, trigger
                # included, between our queuing it and our write: nothing is left to wake
                pass
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HealthServer(HttpServer):
    """The health endpoints (:class:`HealthApp`) on an :class:`HttpServer`."""

    def __init__(self, snapshot: Callable[[], HealthStats], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 stale_after: float = 5.0, clock: Callable[[], float] = time.monotonic, live=None, **limits):
        self.app = HealthApp(snapshot, stale_after, clock, live)
        if live is not None:  # each MJPEG viewer holds a worker thread: /health keeps its own
            limits.setdefault("threads", THREADS + live.max_viewers)
        super().__init__(self.app, host, port, name="health", **limits)
        log.info("health endpoints on http://%s:%d/health, /stats, /metrics%s", *self.address,
                 ", /live (token required)" if live is not None else "")

    def answer(self, path: str) -> tuple[int, str, bytes]:
        return self.app.answer(path)


def start_health_server(
    snapshot: Callable[[], HealthStats],
    *,
    enabled: bool = True,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    stale_after: float = 5.0,
    live=None,
) -> HealthServer | None:
    """A running :class:`HealthServer`, or None when switched off."""
    if not enabled:
        return None
    return HealthServer(snapshot, host=host, port=port, stale_after=stale_after, live=live)


class _SaidEvery:
    """What keeps happening, said in at most one line every ``interval`` seconds with how often it happened: a
    line each time let a flood of clients write past journald's rate limit, which then drops the service's lines."""

    def __init__(self, interval: float):
        self.interval = interval
        self._next = -math.inf  # time.monotonic() from which the next line may be said
        self._count = 0

    def due(self, now: float, times: int = 1) -> int | None:
        """``times`` more; when a line is due now, how many since the last one (this ``times`` too), else None."""
        self._count += times
        if now < self._next:
            return None
        count, self._count, self._next = self._count, 0, now + self.interval
        return count


class _Backlog:
    """waitress's queue logger for one server: requests waiting for a worker, said at most once a ``interval``.

    waitress warns "Task queue depth is N" at every request that finds every worker busy: a client flooding the
    port made 14,000 lines a minute, past journald's rate limit, which then drops the service's own lines."""

    def __init__(self, workers: int, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.workers, self.interval, self.clock = workers, interval, clock
        self._said = _SaidEvery(interval)

    def warning(self, message: str, *args) -> None:
        count = self._said.due(self.clock())
        if count is None:
            return
        since = f"; {count - 1} more times since it was last said" if count > 1 else ""
        log.warning("HTTP requests wait for the %d workers (%s)%s; said at most once every %.0f s", self.workers,
                    message % args, since, self.interval)


def _until_idle(workers: ThreadedTaskDispatcher, timeout: float) -> None:
    """Return once every worker waits for a request, or after ``timeout`` seconds (a line said too eagerly is the
    only cost of going on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with workers.lock:
            if workers.active_count <= 0:
                return
        time.sleep(0.001)


_BUSY_BODY = b'{"error": "busy: too many connections"}\n'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _BoundedServer(TcpWSGIServer):
    """waitress's server, except what it does at ``connection_limit``.

    waitress stops accepting there, so newcomers wait in the kernel's listen queue until idle
    connections time out: a thousand idle connections then delay ``/health`` by minutes. Here a
    newcomer always gets an answer: the oldest connection with nothing in progress is closed to make
    room, and when every connection is busy the newcomer gets a 503 at once.
    """

    # the cap is said once for an episode, and its end once it has been clear this long: a client holding the port
    # full (slowloris) made it swing at every newcomer, a warning and an info line each time, 3 lines a second
    FULL_QUIET_SECONDS = 60.0
    _full_since: float | None = None  # time.monotonic() the cap was first met, while it is said to be
    _full_last = 0.0  # when the cap was last met
    _closed_idle = _refused = 0  # in this episode

    # closing connections whose client stopped taking bytes is said at most once in this long, with how many
    STALLED_SAID_EVERY = 60.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._delivered: dict[object, tuple[int, float]] = {}  # channel -> (bytes its client acknowledged, since)
        self._stalled_said = _SaidEvery(self.STALLED_SAID_EVERY)

    def readable(self) -> bool:
        # as waitress's readable(), less its stop-accepting rule
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
            self._close_stalled(time.monotonic())
            self._say_when_clear(time.monotonic())
        return self.accepting

    def _close_stalled(self, now: float) -> None:
        """Close each connection whose client has acknowledged none of the bytes waiting for it for ``channel_timeout``.

        waitress closes only connections with no request in progress and has no write timeout: an MJPEG viewer
        that stopped reading (a phone asleep, a frozen tab, a host gone, which TCP gives up on after ~15 min) kept
        its place in the live view, and two locked everyone else out. Progress is what TCP says the client
        acknowledged, not what waitress handed the kernel: on loopback the kernel took 2.8 MB over 18 s from a
        client that read nothing. A client on a link too slow for every frame acknowledges every second segment
        it gets (the stream then skips frames): only a link under ~600 B/s goes ``channel_timeout`` without one."""
        delivered: dict[object, tuple[int, float]] = {}
        closed, last = 0, ""
        for channel in list(self.active_channels.values()):
            state = _delivery(channel.socket)
            if state is None:  # not TCP on Linux: as waitress does
                continue
            acknowledged, queued = state
            before = self._delivered.get(channel)
            waiting = queued > 0 or channel.total_outbufs_len > 0
            since = before[1] if waiting and before is not None and before[0] == acknowledged else now
            if now - since >= self.adj.channel_timeout:
                last = str(channel.addr[0]) if isinstance(channel.addr, tuple) else "a client"
                channel.handle_close()  # in the I/O thread, as waitress's own closes; its worker wakes and ends
                closed += 1
                continue
            delivered[channel] = (acknowledged, since)
        self._delivered = delivered
        count = self._stalled_said.due(now, closed) if closed else None
        if count is not None:
            log.info("closed %d HTTP connection(s) whose client took none of the answer for %d s (the last from %s; "
                     "a live viewer that stopped reading frees its place); said at most once a minute",
                     count, self.adj.channel_timeout, last)

    def handle_accept(self) -> None:
        if len(self.active_channels) < self.adj.connection_limit:
            super().handle_accept()
            return
        now = time.monotonic()
        if self._full_since is None:
            self._full_since, self._closed_idle, self._refused = now, 0, 0
            log.warning("%d connections to the HTTP port: closing idle ones, refusing when none is idle (said again "
                        "once it has been below for %.0f s)", len(self.active_channels), self.FULL_QUIET_SECONDS)
        self._full_last = now
        if self._close_oldest_idle():
            self._closed_idle += 1
            super().handle_accept()
        else:
            self._refused += 1
            self._refuse()

    def _say_when_clear(self, now: float) -> None:
        if self._full_since is not None and now - self._full_last >= self.FULL_QUIET_SECONDS:
            log.info("HTTP connections below %d for %.0f s; in the %.0f s before, %d idle ones were closed for "
                     "newcomers and %d newcomers refused", self.adj.connection_limit, self.FULL_QUIET_SECONDS,
                     self._full_last - self._full_since, self._closed_idle, self._refused)
            self._full_since = None

    def _close_oldest_idle(self) -> bool:
        idle = [channel for channel in self.active_channels.values()
                if not channel.requests and not channel.total_outbufs_len]
        if not idle:
            return False
        min(idle, key=lambda channel: channel.last_activity).handle_close()
        return True

    def _refuse(self) -> None:
        try:
            accepted = self.accept()
        except OSError:
            return
        if accepted is None:
            return
        connection = accepted[0]
        try:
            connection.setblocking(False)
            connection.send(BUSY)
        except OSError:
            pass
        finally:
            connection.close()

    def close_all(self) -> None:
        """Close the listening socket, every connection and the trigger (in the I/O thread)."""
        for dispatcher in list(self._map.values()):
            dispatcher.close()


def _delivery(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes the client acknowledged, bytes queued in the kernel not yet acknowledged) of a TCP socket; None off Linux."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # on a socket: SIOCOUTQ
    except (AttributeError, OSError, ValueError):
        return None
    if len(info) < TCPI_BYTES_ACKED + 8:
        return None
    return struct.unpack_from("=Q", info, TCPI_BYTES_ACKED)[0], struct.unpack("=i", queued)[0]


def _json(status: int, document: Mapping[str, Any]) -> tuple[int, str, bytes]:
    return int(status), "application/json", (json.dumps(document, sort_keys=True) + "\n").encode()
