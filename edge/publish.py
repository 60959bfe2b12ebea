"""The MQTT contract (topics, payloads, Home Assistant discovery) and the publishers that speak it.

Topics, under ``<prefix>`` = ``mqtt.topic_prefix`` (default ``cryedge/<device id>``); docs/mqtt.md
describes them for Home Assistant users:

- ``<prefix>/availability``: ``online`` / ``offline``, retained; the last will is ``offline``.
- ``<prefix>/state``: retained JSON ``{"crying": "ON"|"OFF", "probability", "since", "event_id", "model"}``.
- ``<prefix>/event``: JSON cry start / end (``event_type`` ``cry_start`` / ``cry_end``), QoS 1, not retained.
- ``<prefix>/stats``: retained JSON diagnostics ``{"fps", "inference_ms", "face_share", "outbox_fault"}``, with
  ``[snapshot]`` on also ``snapshots_sent``, ``snapshots_dropped`` and ``snapshot_connected``.
- ``<prefix>/snapshot``: with ``[snapshot]`` on, the JPEG of the frame that started a cry (bytes), retained,
  QoS 1, on a connection of its own (``<client id>-pictures``): a PUBLISH goes out whole, and on the alerts'
  connection a cry's end waited behind the rest of its start's picture on a slow link. A picture is sent once the
  broker has acknowledged every event sent and the previous picture; meanwhile only the newest one waits, in
  memory (never in the outbox), also while the broker is away.
- ``<discovery prefix>/device/<device id>/config``: one device-based discovery document, retained,
  re-sent when ``<discovery prefix>/status`` says ``online`` (at most every ``DISCOVERY_INTERVAL``).

On every connect the state and stats are published at once (null figures until measured), so that
Home Assistant never shows what a previous run left retained. ``close()`` publishes one final OFF.

Publishing never blocks the caller: ``publish_*`` put the request on a queue. One publisher thread
owns the outbox and all publishing; paho's network loop runs in its own thread and its callbacks only
put notices on the same queue. So everything the publisher does happens in one order. An unexpected
error on either thread (a bug) is handed to ``on_fault`` (the daemon stops on it) and the thread goes on: it is
the one that delivers the end of the episode the daemon then ends. An event whose handling failed is still stored
and sent, before that end. A fault while closing does not end the close: what is queued is still stored and sent,
then the final OFF and ``offline``.

Broker at start: a refusal (bad credentials, not authorized) or a TLS failure in the broker's first answer is
fatal (``BrokerError``): retrying cannot fix it. A broker that cannot be reached (connection refused, no route,
name not resolved) is not: a Pi may boot before its broker. Nor is one that has not answered within
``FIRST_ANSWER_SECONDS``: a black-holed host (SYN dropped, or TCP accepted and no CONNACK) must not hold up
monitoring. The publisher then retries with back-off in paho's thread and keeps events in the outbox, exactly as
when the broker goes away later; a refusal or TLS failure from then on is said once in the log and retried.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from edge import __version__
from edge.alarm import AlarmState
from edge.config import Config, DeviceConfig, MqttConfig, OutboxConfig
from edge.errors import BrokerError, error_in_one_line
from edge.inbound_limit import MAX_INBOUND_PUBLISH, bounded_client_class
from edge.outbox import Entry, Outbox, runtime_directory
from edge.records import OK, AlarmEvent

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
# Home Assistant asks for discovery by publishing "online" on <discovery prefix>/status: answered at most
# this often (seconds), the last request always served, so a flood of them costs one document a period
DISCOVERY_INTERVAL = 5.0
# a sense's status change (model_error, no_sound_device, and back) goes on the state topic at once, not a
# state_interval later, but at most this often: a status flapping at every window must not flood the broker
STATUS_INTERVAL = 1.0
# ... and a status said is held (HeldStatus): the face lost in every other frame of a dark night made Home
# Assistant's "Camera sees" entity, its logbook and its recorder's database change once a second all night
STATUS_HOLD = 5.0
EVENT_TYPES = {"start": "cry_start", "end": "cry_end"}
# refusals that a retry may cure; any other refusal at start is fatal
TRANSIENT_REFUSALS = {"Server unavailable", "Server busy", "Quota exceeded", "Connection rate exceeded"}
# start() waits this long (seconds) for the broker's first answer, so that a wrong password or certificate stops
# `cryedge run` in one line before monitoring starts; a broker that answers at all answers a CONNECT in milliseconds.
# It waited mqtt.connect_timeout (10 s) for a black-holed one, and judged no frame or sound meanwhile.
FIRST_ANSWER_SECONDS = 1.0
# MqttPublisher.close() waits up to CLOSE_ACK_SECONDS (or the timeout it is given) for the broker to acknowledge the end
# of a cry, the OFF and offline, and CLOSE_MARGIN_SECONDS more for its thread to store what is queued and finish
CLOSE_ACK_SECONDS = 5.0
CLOSE_MARGIN_SECONDS = 5.0


# ----------------------------------------------------------------------------- the contract


class Topics:
    """Every topic name cryedge uses, in one place."""

    def __init__(self, prefix: str, discovery_prefix: str, device_id: str):
        self.prefix = prefix.rstrip("/")
        self.availability = f"{self.prefix}/availability"
        self.state = f"{self.prefix}/state"
        self.event = f"{self.prefix}/event"
        self.stats = f"{self.prefix}/stats"
        self.snapshot = f"{self.prefix}/snapshot"
        self.discovery = f"{discovery_prefix}/device/{device_id}/config"
        self.ha_status = f"{discovery_prefix}/status"

    @classmethod
    def from_config(cls, mqtt: MqttConfig, device: DeviceConfig) -> Topics:
        return cls(mqtt.topic_prefix or f"cryedge/{device.id}", mqtt.discovery_prefix, device.id)


def iso_utc(wall_time: float) -> str:
    """``2026-11-23T09:40:26.123Z``."""
    return datetime.fromtimestamp(wall_time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(value: float, digits: int) -> float | None:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def event_payload(event: AlarmEvent, device_id: str, model: str) -> dict[str, Any]:
    """The JSON of a start or end event; ``event_type`` is what Home Assistant's event entity reads."""
    payload = {
        "event_type": EVENT_TYPES[event.kind],
        "id": event.event_id,
        "time": iso_utc(event.wall_time),
        "timestamp": round(event.wall_time, 3),
        "probability": _round(event.probability, 3),
        "device": device_id,
        "model": model,
    }
    if event.kind == "end":
        payload["reason"] = event.reason
    return payload


def restart_end_payload(start: Mapping[str, Any], wall_time: float) -> dict[str, Any]:
    """The end of an episode whose process died during it, sent by the next run (reason ``"restart"``)."""
    return {**start, "event_type": EVENT_TYPES["end"], "time": iso_utc(wall_time), "timestamp": round(wall_time, 3),
            "probability": None, "reason": "restart"}


def state_payload(state: AlarmState, model: str) -> dict[str, Any]:
    """The retained state; ``probability`` is null when nothing is measured (before the first score, after a stop)."""
    return {
        "crying": "ON" if state.crying else "OFF",
        "probability": _round(state.probability, 3),
        "since": iso_utc(state.since_wall) if state.since_wall is not None else None,
        "event_id": state.event_id,
        "model": model,
        # with hearing: {"vision": {"probability", "status"}, "audio": {"probability", "status", "level_dbfs"}}
        **(state.senses or {}),
    }


def sense_statuses(state: AlarmState) -> dict[str, Any]:
    """Each sense's ``status`` in the state (``{"audio": "model_error"}``); a change of one is published at once."""
    return {sense: part.get("status") for sense, part in (state.senses or {}).items() if isinstance(part, Mapping)}


@dataclass(frozen=True)
class HeldStatus:
    """What the state topic says one sense's status is, held so that a flickering status is said once.

    A new trouble (``ok`` to ``no_face``, ``model_error``, ...) is said at once; ``ok`` again only once the sense
    has said nothing else for ``hold`` seconds; one trouble after another only once the one said has stood that
    long (then the newest is said). A sense that flickers between ``ok`` and ``no_face`` is said to be ``no_face``
    until it has been ``ok`` for ``hold`` seconds: at most two changes a ``hold``, never one a frame.
    """

    said: Any  # the status the state topic says
    said_at: float  # time.monotonic() when it was first said
    seen: Any  # the sense's newest status
    trouble_at: float  # when the sense last had a status other than ok

    @classmethod
    def first(cls, status: Any, now: float) -> HeldStatus:
        return cls(status, now, status, now if status != OK else -math.inf)

    def due(self, hold: float = STATUS_HOLD) -> float | None:
        """When the newest status may be said; None: it is said already."""
        if self.seen == self.said:
            return None
        if self.said == OK:
            return -math.inf
        return (self.trouble_at if self.seen == OK else self.said_at) + hold

    def update(self, status: Any, now: float, hold: float = STATUS_HOLD) -> HeldStatus:
        """This sense's status at ``now``, and what the topic then says."""
        held = replace(self, seen=status, trouble_at=now if status != OK else self.trouble_at)
        due = held.due(hold)
        return held if due is None or now < due else replace(held, said=status, said_at=now)


def hold_statuses(held: Mapping[str, HeldStatus], statuses: Mapping[str, Any], now: float,
                  hold: float = STATUS_HOLD) -> dict[str, HeldStatus]:
    """Each sense's ``HeldStatus`` after the statuses of a new state (``sense_statuses``); a sense gone is dropped."""
    return {sense: held[sense].update(status, now, hold) if sense in held else HeldStatus.first(status, now)
            for sense, status in statuses.items()}


def last_end_wall(entries: list[Entry]) -> float | None:
    """When the newest cry end among the outbox's ``entries`` happened (a previous run's end not yet delivered, or
    the restart end given to an episode it left open): what a restarted run's OFF is "since". None when the outbox
    holds no end: a delivered end is not kept, so the OFF after a clean restart says since null."""
    ends = []
    for entry in entries:
        if entry.kind == "end":
            with contextlib.suppress(ValueError, TypeError, KeyError):  # an end without a time: none to carry
                ends.append(float(json.loads(entry.payload)["timestamp"]))
    return max((t for t in ends if math.isfinite(t)), default=None)


def unmeasured_state(since_wall: float | None = None) -> AlarmState:
    """OFF with no probability: what a run shows before its first score, and what a stopped one leaves."""
    return AlarmState(False, None, since_wall, math.nan)


# Score.status values of the camera (edge.records), and no_camera (edge.fusion) while no frame comes, as Home
# Assistant's enum sensor lists them: it drops a state that is not among them and goes on showing the last one.
VISION_STATUSES = ("ok", "no_face", "no_body", "too_dark", "model_error", "no_camera")
HEARING_STATUSES = ("ok", "no_sound_device", "no_sound", "model_error")  # edge.audio: why the sound is not judged

# The diagnostics on the stats topic, each a Home Assistant sensor: key -> its discovery options. ``scale``
# multiplies the value for display (a share 0-1 shown in %). A new diagnostic is one line here.
DIAGNOSTICS: dict[str, dict[str, Any]] = {
    "fps": {"name": "Frame rate", "unit_of_measurement": "fps", "suggested_display_precision": 1},
    "inference_ms": {"name": "Inference time", "unit_of_measurement": "ms", "device_class": "duration",
                     "suggested_display_precision": 2},
    "face_share": {"name": "Frames with a face", "unit_of_measurement": "%", "suggested_display_precision": 0,
                   "scale": 100},
    # mean luma of the frames as captured (before the exposure stage lifts dark ones), 0-1
    "brightness": {"name": "Image brightness", "unit_of_measurement": "%", "suggested_display_precision": 0,
                   "icon": "mdi:brightness-6", "scale": 100},
}


def stats_payload(stats: Mapping[str, Any], outbox_fault: str | None = None) -> dict[str, Any]:
    """Diagnostics: every key of ``DIAGNOSTICS`` (null until measured), whatever else is given, and ``outbox_fault``."""
    payload = dict.fromkeys(DIAGNOSTICS) | dict(stats)
    payload = {key: _round(value, 3) if isinstance(value, float) else value for key, value in payload.items()}
    payload["outbox_fault"] = outbox_fault
    return payload


def number_template(key: str, scale: float = 1, digits: int = 3) -> str:
    """A value_template that shows ``value_json.<key>`` (times ``scale``), or unknown when it is null or absent.

    Home Assistant's MQTT sensor takes the rendered text ``None`` as "unknown"; arithmetic on a null
    would make the template fail and log an error on every message instead.
    """
    value = f"value_json.{key}"
    shown = value if scale == 1 else f"({value} * {scale:g}) | round({digits})"
    return f"{{{{ {shown} if {value} is number else none }}}}"


def origin() -> dict[str, str]:
    """Who wrote the discovery document: cryedge, its version, and its home page if the package names one."""
    document = {"name": "cryedge", "sw": __version__}
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        project_urls = metadata("cryedge").get_all("Project-URL") or []
    except PackageNotFoundError:  # running from a source tree that was not installed
        project_urls = []
    urls = [entry.split(",", 1)[1].strip() for entry in project_urls if "," in entry]
    if urls:
        document["url"] = urls[0]
    return document


def audio_template(key: str, scale: float = 1, digits: int = 1) -> str:
    """Like ``number_template`` for ``value_json.audio.<key>``; unknown while the state has no audio part."""
    value = f"value_json.audio.{key}"
    shown = value if scale == 1 else f"({value} * {scale:g}) | round({digits})"
    return f"{{{{ {shown} if value_json.audio is mapping and {value} is number else none }}}}"


# Entities of the audio path ([audio] enabled), read from the state topic's "audio" part.
HEARING = {
    "heard": {"name": "Cry heard", "icon": "mdi:ear-hearing", "unit_of_measurement": "%",
              "value_template": audio_template("probability", scale=100), "suggested_display_precision": 0},
    # dBFS, not device class sound_pressure: that is dB SPL (units dB, dBA), which an uncalibrated
    # microphone's digital level is not; Home Assistant would also refuse the unit dBFS with that class
    "sound_level": {"name": "Sound level", "icon": "mdi:volume-high", "unit_of_measurement": "dBFS",
                    "value_template": audio_template("level_dbfs"), "suggested_display_precision": 0},
}


def discovery_document(topics: Topics, device: DeviceConfig, model: str, hearing: bool = False,
                       snapshot: bool = False, camera: bool = True) -> dict[str, Any]:
    """Home Assistant's device-based discovery payload: the device, its origin, and its entities.

    ``hearing`` adds the audio path's entities (the cry heard, the sound level, what the microphone hears);
    ``snapshot`` the image entity of the cry's picture (HA's MQTT image platform: raw bytes on ``image_topic``).
    Without a ``camera`` the picture's entities, which would stay unknown forever, are sent as
    ``{"p": platform}`` alone, and so are those of hearing or the snapshot when off: Home Assistant removes
    such a component (one an earlier run created); one left out of the document would stay, stale, for ever."""
    uid = f"cryedge_{device.id}"
    components: dict[str, dict[str, Any]] = {
        # Fused from what the camera sees and the microphone hears: no device class, since "sound" would say
        # only the microphone, and "problem" would show Problem/OK; plain on/off with a crying face reads right.
        "crying": {
            "p": "binary_sensor",
            "name": "Crying",
            "icon": "mdi:emoticon-cry-outline",
            "state_topic": topics.state,
            "value_template": "{{ value_json.crying }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "json_attributes_topic": topics.state,
        },
        "probability": {
            "p": "sensor",
            "name": "Cry probability",
            "state_topic": topics.state,
            "value_template": number_template("probability", scale=100, digits=1),
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
        },
        "cry": {
            "p": "event",
            "name": "Cry",
            "state_topic": topics.event,
            "event_types": list(EVENT_TYPES.values()),
        },
        # whether the camera can see the baby: a silent OFF while it is blind is not "calm"
        "vision": {
            "p": "sensor",
            "name": "Camera sees",
            "icon": "mdi:eye-outline",
            "entity_category": "diagnostic",
            "device_class": "enum",
            "options": list(VISION_STATUSES),
            "state_topic": topics.state,
            "value_template": "{{ value_json.vision.status if value_json.vision is defined else none }}",
        },
    }
    components["snapshot"] = {"p": "image", "name": "Cry snapshot", "icon": "mdi:cctv",
                              "image_topic": topics.snapshot, "content_type": "image/jpeg"}
    for key, options in HEARING.items():
        components[key] = {"p": "sensor", "state_topic": topics.state, "state_class": "measurement", **options}
    components["hearing"] = {  # a microphone gone is said, not shown as a quiet room
        "p": "sensor", "name": "Microphone hears", "icon": "mdi:microphone-outline", "entity_category": "diagnostic",
        "device_class": "enum", "options": list(HEARING_STATUSES), "state_topic": topics.state,
        "value_template": "{{ value_json.audio.status if value_json.audio is defined else none }}"}
    for key, options in DIAGNOSTICS.items():
        options = dict(options)
        scale = options.pop("scale", 1)
        components[key] = {"p": "sensor", "state_topic": topics.stats, "entity_category": "diagnostic",
                           "state_class": "measurement", "value_template": number_template(key, scale, 0),
                           **options}
    components["outbox"] = {
        "p": "binary_sensor",
        "name": "Event store",
        "device_class": "problem",  # on: events cannot be written to disk (kept in the runtime directory or memory)
        "entity_category": "diagnostic",
        "state_topic": topics.stats,
        "value_template": "{{ 'ON' if value_json.outbox_fault else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    off = [*(() if camera else ("vision", *DIAGNOSTICS)), *(() if snapshot else ("snapshot",)),
           *(() if hearing else (*HEARING, "hearing"))]
    for key in off:
        components[key] = {"p": components[key]["p"]}
    for key, component in components.items():
        if len(component) > 1:  # not a removal
            component["unique_id"] = f"{uid}_{key}"
    return {
        "dev": {"ids": [uid], "name": device.name, "mf": "cryedge", "mdl": f"cryedge ({model})", "sw": __version__},
        "o": origin(),
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
        "cmps": components,
    }


class _WithoutReconnectNoise(logging.Filter):
    """paho logs an ERROR on each loop pass while it waits to reconnect; the publisher says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


def _paho_logger() -> logging.Logger:
    logger = logging.getLogger(f"{__name__}.paho")
    if not any(isinstance(f, _WithoutReconnectNoise) for f in logger.filters):
        logger.addFilter(_WithoutReconnectNoise())
    return logger


# paho's own errors of the socket under a connection (its "failed to receive" is said of failed sends too)
_SOCKET_ERRORS = ("failed to receive on socket: ", "timeout on socket: ")


class _PahoLog(logging.LoggerAdapter):
    """One client's paho log, into ``edge.publish.paho``, its socket-level errors at debug, their reason kept for the
    publisher's own line: a broker host that reset the connection made paho log "failed to receive on socket: [Errno
    104] Connection reset by peer" as an ERROR beside the publisher's "lost ... (Unspecified error); reconnecting",
    the only line that said why (and at every reset attempt before the broker answered). ``take_socket_error``."""

    def __init__(self) -> None:
        super().__init__(_paho_logger(), {})
        self._socket_error: OSError | None = None

    def log(self, level, msg, *args, **kwargs) -> None:
        if isinstance(msg, str) and msg.startswith(_SOCKET_ERRORS):
            self._socket_error = next((arg for arg in args if isinstance(arg, OSError)), None)
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def take_socket_error(self) -> OSError | None:
        """The socket error paho logged since the last call, if any (paho's thread, before its on_disconnect)."""
        error, self._socket_error = self._socket_error, None
        return error


def _client_class():
    """``bounded_client_class()`` that hands why an attempt to connect failed to ``on_connect_failure(error)``, and
    that ``stop()``s without waiting for an attempt under way.

    paho makes the attempts in its own thread and keeps the error to itself (its ``on_connect_fail`` gets none),
    yet a TLS failure in the first answer is fatal and one later is said in the log.
    """

    class Client(bounded_client_class()):
        on_connect_failure = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.attempt_lock = threading.Lock()
            self.attempting = False  # paho's thread is in an attempt to connect (TCP, TLS handshake)
            self.stopping = False

        def reconnect(self):
            with self.attempt_lock:
                if self.stopping:  # stop() came between two attempts: no new one
                    self.disconnect()
                    raise ConnectionAbortedError("stopping")
                self.attempting = True
            try:
                return super().reconnect()
            except OSError as error:
                if self.on_connect_failure is not None:
                    self.on_connect_failure(error)
                raise
            finally:
                with self.attempt_lock:
                    self.attempting = False
                    if self.stopping:  # stop() did not wait for this attempt: paho's thread ends now it is over
                        self.disconnect()

        def stop(self) -> bool:
            """``loop_stop()``, or False without waiting when paho's thread is in an attempt to connect.

            Nothing interrupts an attempt: a host that drops the SYN holds it for ``connect_timeout`` (up to 300 s),
            and loop_stop() waited for it while systemd allows a stop 20 s (TimeoutStopSec) before it kills. The
            thread (a daemon thread) is told to end once the attempt is over instead.
            """
            with self.attempt_lock:
                self.stopping = True
                attempting = self.attempting
            if attempting:
                self.disconnect()
                return False
            self.loop_stop()
            return True

    return Client


def _json(payload: Mapping) -> str:
    return json.dumps(payload, separators=(",", ":"))


# ----------------------------------------------------------------------------- publishers


class Publisher(Protocol):
    """What the daemon calls; every ``publish_*`` returns at once."""

    def start(self) -> None: ...
    def publish_event(self, event: AlarmEvent) -> None: ...
    def publish_state(self, state: AlarmState) -> None: ...
    def publish_stats(self, stats: Mapping[str, float]) -> None: ...
    def publish_snapshot(self, jpeg: bytes, event: AlarmEvent | None = None) -> None: ...
    def snapshot_dropped(self) -> None: ...
    def close(self, timeout: float = ...) -> None: ...


class StdoutPublisher:
    """No broker: events and changes of the crying state as JSON lines on stdout.

    The frame loop only queues a line; a writer thread writes them. A reader that is slow or gone (a
    full pipe) so never holds up frames: past ``queue_lines`` waiting lines, new ones are dropped and
    counted (the events are in the log as well). When the reader closes its end (``cryedge run |
    head -1``), output stops quietly and ``on_output_closed`` is called: the daemon then stops, as a
    Unix filter does whose output nobody wants, with exit code 0 and no traceback. A stdout that is
    not there at all (``cryedge run >&-``) or closed under the writer drops the lines with one warning;
    the run goes on (the events are in the log). Lines accepted before the interpreter exits are
    written even if ``close()`` was never called.
    """

    connected = False
    outbox_depth = 0
    QUEUE_LINES = 1000
    CLOSE_SECONDS = 2.0  # at close, how long the queued lines may take to go out

    def __init__(self, device_id: str, model: str, stream=None, on_output_closed=None, queue_lines: int = QUEUE_LINES,
                 on_fault=None):
        self.last_event: dict | None = None
        self._on_fault = on_fault
        self.device_id = device_id
        self.model = model
        self._stream = stream
        self._on_output_closed = on_output_closed
        self._crying: bool | None = None
        self._last_state: AlarmState | None = None
        self._lines: queue.Queue[str] = queue.Queue(maxsize=queue_lines)
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()
        self.output_closed = False
        self.dropped = 0
        self._write_failures = 0
        self._gone: str | None = None  # why lines are dropped: "closed" (stdout gone) or unset (not read)

    def _write(self, kind: str, payload: Mapping) -> None:
        if self.output_closed:
            if self._gone:
                self.dropped += 1
            return
        if self._writer is None:
            self.start()
        try:
            self._lines.put_nowait(_json({"type": kind, **payload}) + "\n")
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("stdout is not being read: dropping output lines (the events are in the log too)")

    def start(self) -> None:
        if self._writer is None:
            # the stream of this run, taken once: a test harness may swap sys.stdout and close the old one
            self._stream = self._stream or sys.stdout
            self._writer = threading.Thread(target=self._write_lines, name="cryedge-stdout", daemon=True)
            self._writer.start()
            # a daemon thread dies with the interpreter: lines accepted but not yet written would vanish
            atexit.register(self.close)

    def _write_lines(self) -> None:
        while True:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self._emit(line.encode())
            except (BrokenPipeError, ConnectionResetError):
                self.output_closed = True
                log.info("stdout was closed by its reader; stopping")
                if self._on_output_closed is not None:
                    self._on_output_closed()
                return
            except OSError as error:  # a full disk under a redirect: keep trying, the next line may fit
                self._write_failures += 1
                if self._write_failures == 1:
                    log.warning("cannot write to stdout: %s", error.strerror or error)
            except (ValueError, AttributeError):  # a closed file object, or no stdout at all (sys.stdout None)
                self._stdout_gone(1)
                return
            except Exception as error:  # noqa: BLE001 - a bug: the line is lost, said; the next ones still go out
                report_fault(self._on_fault, error)

    def _stdout_gone(self, lost: int) -> None:
        self.output_closed = True
        self._gone = "closed"
        self.dropped += lost + self._lines.qsize()
        log.warning("stdout is closed: the JSON lines are dropped (the events are in the log too)")

    def _emit(self, data: bytes) -> None:
        stream = self._stream
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.StringIO and the like
            stream.write(data.decode())
            stream.flush()
            return
        # The file descriptor, not the file object: nothing is left in Python's buffer for the interpreter
        # to flush into a dead pipe at exit, and a writer blocked here holds no lock that shutdown needs.
        while data:
            data = data[os.write(fd, data):]

    def publish_event(self, event: AlarmEvent) -> None:
        self.last_event = event_payload(event, self.device_id, self.model)
        self._write("event", self.last_event)

    def publish_state(self, state: AlarmState) -> None:
        self._last_state = state
        if state.crying != self._crying:
            self._crying = state.crying
            self._write("state", state_payload(state, self.model))

    def publish_stats(self, stats: Mapping[str, float]) -> None:
        pass  # diagnostics go to the health endpoint and the logs, not into the event stream

    def publish_snapshot(self, jpeg: bytes, event: AlarmEvent | None = None) -> None:
        pass  # pictures go to a broker only, never into a terminal or a log file

    def snapshot_dropped(self) -> None:
        pass  # no broker, no pictures: nothing counts them

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Publish OFF if still crying, and give the queued lines ``timeout`` (at most ``CLOSE_SECONDS``) to be written."""
        if self._closing.is_set():
            return
        atexit.unregister(self.close)
        if self._crying:
            self.publish_state(unmeasured_state(time.time()))
        self._closing.set()
        if self._writer is not None:
            self._writer.join(min(timeout, self.CLOSE_SECONDS))
            if self._writer.is_alive():  # blocked on a pipe nobody reads; it is a daemon thread
                self.dropped += self._lines.qsize()
        if self.dropped and not self._gone:  # a closed stdout was said once, when it was found
            log.warning("%d output lines were dropped: stdout was not being read", self.dropped)

    def __enter__(self) -> StdoutPublisher:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MqttPublisher:
    """Publishes the contract to a broker through paho-mqtt 2.x, with an on-disk outbox for events.

    ``start()`` connects (see the module docstring for what is fatal); ``close()`` publishes the final
    state OFF and ``offline``, waits up to ``timeout`` for the broker to acknowledge what is in flight,
    and disconnects. Events still unacknowledged stay in the outbox for the next run.
    """

    def __init__(self, mqtt: MqttConfig, device: DeviceConfig, outbox: OutboxConfig, model: str,
                 hearing: bool = False, snapshot: bool = False, camera: bool = True, on_fault=None):
        if not mqtt.enabled:
            raise ValueError("MqttPublisher needs mqtt.host; use StdoutPublisher without a broker")
        self.mqtt = mqtt
        self.device = device
        self.model = model
        self.hearing = hearing  # the audio path runs: its entities are discovered too
        self.snapshot = snapshot  # [snapshot] on: the image entity is discovered
        self.camera = camera  # False: [source] type "none", no picture entities
        self._on_fault = on_fault  # (thread name, error): an unexpected error on the publisher's or paho's thread
        self._pictures = None  # paho client of the pictures' own connection ([snapshot] on)
        self._pictures_connected = False  # as the publisher thread last saw it
        self._pictures_refusal_said: str | None = None
        self._picture_in_flight: int | None = None  # paho mid of the picture the broker has not acknowledged yet
        self._snapshot_waiting: bytes | None = None  # the newest picture not yet sent: only one waits, in memory
        self.snapshots_sent = self.snapshots_dropped = 0
        self.topics = Topics.from_config(mqtt, device)
        self.where = f"mqtt {mqtt.host}:{mqtt.effective_port}"
        self._outbox_config = outbox
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client = None
        self._paho_log = _PahoLog()
        self._outbox: Outbox | None = None
        self._first_answer = threading.Event()
        self._refusal: str | None = None
        self._first_failure: OSError | None = None  # why the first attempt failed (TLS, unreachable), if it did
        self._refusal_said: str | None = None  # the refusal the log last said (publisher thread)
        self._retrying = False  # start() returned: a refusal from now on is retried, not fatal (BrokerError)
        self._connected_once = False
        self.connected = False  # as the publisher thread last saw it
        self.outbox_depth = 0
        self.last_event: dict | None = None
        # publisher-thread state
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._state: AlarmState | None = None
        self._restart_state = unmeasured_state()  # what state says until something is measured (set in start)
        self._state_sent_at = -math.inf
        self._state_sent_crying: bool | None = None
        self._state_sent_statuses: dict[str, Any] = {}
        self._status_sent_at = -math.inf  # when a state with a changed sense status last went out
        self._state_due: float | None = None  # a status change held back by STATUS_INTERVAL goes out then
        self._held: dict[str, HeldStatus] = {}  # each sense's status as the state topic says it
        self.status_hold = STATUS_HOLD
        self._last_end_wall: dict[str, float] = {}  # event id -> when its end happened, for the final OFF
        self._stats: dict = {}
        self._stats_sent_at = -math.inf
        self._stats_sent_fault: str | None = None
        self._stats_sent_source_state: str | None = None
        self._discovery_sent_at = -math.inf
        self._discovery_due: float | None = None  # a re-send Home Assistant asked for, debounced
        # set by paho's thread when it queues an ha_online notice: a flood queues one, not one per message
        self._ha_online_queued = threading.Event()
        self.discovery_interval = DISCOVERY_INTERVAL

    # --- called by the daemon (any thread); never blocks

    def publish_event(self, event: AlarmEvent) -> None:
        self._queue.put(("event", event))

    def publish_state(self, state: AlarmState) -> None:
        self._queue.put(("state", state))

    def publish_stats(self, stats: Mapping[str, float]) -> None:
        """Diagnostics (``fps``, ``inference_ms``, ``face_share``); sent at most every ``mqtt.stats_interval``."""
        self._queue.put(("stats", dict(stats)))

    def picture_figures(self) -> dict[str, Any]:
        """With [snapshot] on, what became of the pictures: ``snapshots_sent``, ``snapshots_dropped`` (every picture of a
        cry not sent: replaced by a newer one before the broker had taken it (a slow link, a broker away or refusing
        the pictures' connection), or never handed over by the encoder (``snapshot_dropped``: behind, or failing))
        and ``snapshot_connected``; empty with [snapshot] off."""
        if not self.snapshot:
            return {}
        return {"snapshots_sent": self.snapshots_sent, "snapshots_dropped": self.snapshots_dropped,
                "snapshot_connected": self._pictures_connected}

    @property
    def outbox_fault(self) -> str | None:
        """Why events are kept in the runtime directory's store or in memory rather than in the outbox on the card (disk full, read-only); None while the outbox works."""
        outbox = self._outbox
        return outbox.fault if outbox is not None else None

    # --- life cycle

    def start(self) -> None:
        """Connect; ``BrokerError`` if the broker refuses us or TLS fails, else retry in the background."""
        import paho.mqtt.client as paho

        mqtt = self.mqtt
        protocol = paho.MQTTv5 if mqtt.protocol == "5" else paho.MQTTv311
        properties = None
        if protocol == paho.MQTTv5:  # a huge message on homeassistant/status: the broker does not even send it
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = MAX_INBOUND_PUBLISH + 5  # the whole packet: its fixed header too
        client = self._new_client(mqtt.client_id or "", protocol, self._paho_log)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        # an exception out of a callback ends paho's network thread (no more sending, acknowledging, reconnecting,
        # while all looked well): it is reported instead, and the thread delivers the end of the episode
        client.on_connect = self._reporting(self._on_connect)
        client.on_disconnect = self._reporting(self._on_disconnect)
        client.on_publish = self._reporting(self._on_publish)
        client.on_message = self._reporting(self._on_message)
        client.on_connect_failure = self._reporting(self._on_connect_failure)
        self._client = client
        if self.snapshot:
            # the pictures' own connection: a PUBLISH goes out whole, so on one link shared with the alerts a
            # cry's end waited behind the rest of its start's picture (5 s at 8 KiB/s), and the OFF with it
            pictures = self._new_client(f"{mqtt.client_id}-pictures" if mqtt.client_id else "", protocol, _PahoLog())
            pictures.on_connect = self._reporting(self._on_pictures_connect)
            pictures.on_disconnect = self._reporting(self._on_pictures_disconnect)
            pictures.on_publish = self._reporting(self._on_picture_published)
            self._pictures = pictures

        # where an outbox on a card gone read-only notes what it delivered, so that a restart does not send it again
        self._outbox = Outbox(self._outbox_config.path, self._outbox_config.max_events, runtime_directory())
        self._end_episodes_left_open()
        self._restart_state = unmeasured_state(last_end_wall(self._outbox.pending()))
        self.outbox_depth = len(self._outbox)
        if self.outbox_depth:
            log.info("%d undelivered events in the outbox %s", self.outbox_depth, self._outbox.path)
        self._thread = threading.Thread(target=self._run, name="cryedge-publisher", daemon=True)
        self._thread.start()
        # every attempt, the first too, is made in paho's thread: here a black-holed host held start() for
        # connect_timeout, and monitoring with it
        client.connect_async(mqtt.host, mqtt.effective_port, keepalive=mqtt.keepalive, properties=properties)
        client.loop_start()
        if self._pictures is not None:
            self._pictures.connect_async(mqtt.host, mqtt.effective_port, keepalive=mqtt.keepalive,
                                         properties=properties)
            self._pictures.loop_start()
        if not self._first_answer.wait(FIRST_ANSWER_SECONDS):
            self._retrying = True
            log.warning("%s has not answered in %.0f s; monitoring goes on, events go to the outbox, connecting in "
                        "the background", self.where, FIRST_ANSWER_SECONDS)
            return
        failure = self._first_failure
        if isinstance(failure, ssl.SSLError) or (self._refusal is not None and self._refusal not in TRANSIENT_REFUSALS):
            client.loop_stop()
            self._stop_pictures()
            self._stop_thread()
            if failure is not None:
                raise BrokerError(f"{self.where}: TLS handshake failed: {failure}")
            raise BrokerError(f"{self.where} refused the connection: {self._refusal}{self._refusal_hint()}")
        self._retrying = True
        if failure is not None:
            log.warning("%s unreachable (%s); retrying in the background, events go to the outbox",
                        self.where, failure.strerror or failure)

    def _new_client(self, client_id: str, protocol: int, paho_log: _PahoLog):
        """A paho client with the broker's credentials, TLS and back-off; BrokerError when TLS cannot be set up."""
        from paho.mqtt.enums import CallbackAPIVersion

        mqtt = self.mqtt
        # a huge message on homeassistant/status is dropped as it arrives, not read whole (edge.inbound_limit)
        client = _client_class()(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.enable_logger(paho_log)  # a LoggerAdapter: paho calls only its log()
        if mqtt.username:
            password = mqtt.password.get_secret_value() if mqtt.password is not None else None
            client.username_pw_set(mqtt.username, password)
        if mqtt.tls is not None:
            try:
                client.tls_set(
                    ca_certs=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
                    certfile=str(mqtt.tls.certfile) if mqtt.tls.certfile else None,
                    keyfile=str(mqtt.tls.keyfile) if mqtt.tls.keyfile else None,
                )
            except (OSError, ssl.SSLError) as error:
                raise BrokerError(f"{self.where}: TLS set-up failed (mqtt.tls): {error}") from None
            client.tls_insecure_set(mqtt.tls.insecure)
        client.reconnect_delay_set(mqtt.reconnect_min_seconds, max(mqtt.reconnect_min_seconds, mqtt.reconnect_max_seconds))
        client.connect_timeout = mqtt.connect_timeout  # TCP and TLS of each attempt, made in paho's thread
        return client

    def _stop_pictures(self) -> None:
        """The pictures' connection cut at once: a picture on its way is lost (as one waiting is), not awaited. paho's
        thread ends only once what it was given is sent and acknowledged, or its socket fails: on a slow or stalled
        link it held the stop for as long as the picture took."""
        pictures, self._pictures = self._pictures, None
        if pictures is None:
            return
        pictures.disconnect()
        sock = pictures.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        pictures.stop()

    def _end_episodes_left_open(self) -> None:
        """An ON must be followed by an OFF: end the episodes a previous run started and never ended."""
        for event_id, start_payload in self._outbox.open_episodes():
            log.warning("ending cry episode %s, left open by a previous run that stopped without ending it", event_id)
            start = json.loads(start_payload)
            # a Pi without a real-time clock boots at the time fake-hwclock saved, maybe before the start's
            end = restart_end_payload(start, max(time.time(), start.get("timestamp") or 0.0))
            self._outbox.add(event_id, "end", _json(end))

    def _refusal_hint(self, reason: str | None = None) -> str:
        reason = (reason if reason is not None else self._refusal or "").lower()
        if "user name" not in reason and "authorized" not in reason:
            return ""
        if self.mqtt.username and self.mqtt.password is None:
            return (f" (user {self.mqtt.username!r} has no password: set $CRYEDGE_MQTT_PASSWORD, mqtt.password_file"
                    " or the systemd credential mqtt_password)")
        return " (check mqtt.username and the password)"

    def close(self, timeout: float = CLOSE_ACK_SECONDS) -> None:
        """Everything queued into the outbox, final state OFF, ``offline``, wait for acknowledgements
        (up to ``timeout``), disconnect: all of it within ``timeout`` + ``CLOSE_MARGIN_SECONDS``."""
        if self._thread is None:
            return
        self._queue.put(("close", timeout))
        self._thread.join(timeout + CLOSE_MARGIN_SECONDS)
        if self._thread.is_alive():
            log.error("the publisher did not finish closing in %.0f s; events it had not stored are lost",
                      timeout + CLOSE_MARGIN_SECONDS)
        self._thread = None
        self._stop_pictures()
        if self._client is not None and not self._client.stop():
            log.warning("%s never answered the attempt to connect under way: stopped without waiting for it to give up "
                        "(mqtt.connect_timeout %g s)", self.where, self.mqtt.connect_timeout)

    def _stop_thread(self) -> None:
        self._queue.put(("stop", None))
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._outbox is not None:
            self._outbox.close()

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- paho callbacks (network thread): tiny, they only queue notices

    def _reporting(self, callback):
        """``callback`` for paho, with an unexpected error reported (``report_fault``) instead of raised into paho."""
        def reporting(*args, **kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - reported, not lost: see _reporting
                report_fault(self._on_fault, error)

        return reporting

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._queue.put(("refused", str(reason_code)))
        else:
            self._refusal = None
            self._queue.put(("connected", None))
        self._first_answer.set()

    def _on_connect_failure(self, error: OSError) -> None:
        if not self._first_answer.is_set():
            self._first_failure = error
            self._first_answer.set()
        if isinstance(error, ssl.SSLError):  # once start() has returned, said once and retried as a refusal is
            self._queue.put(("refused", f"TLS handshake failed: {error}"))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        # paho's reason for a connection its socket lost is "Unspecified error"; the socket's own says what happened
        error = self._paho_log.take_socket_error()
        if error is not None and not self._first_answer.is_set():  # reset before any answer: start() says why
            self._on_connect_failure(error)
        self._queue.put(("disconnected", (error.strerror or str(error)) if error is not None else str(reason_code)))

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        self._queue.put(("acked", mid))

    def _on_pictures_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self._queue.put(("pictures_link", str(reason_code) if reason_code.is_failure else None))

    def _on_pictures_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self._queue.put(("pictures_link", "lost"))

    def _on_picture_published(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        self._queue.put(("picture_acked", mid))

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self.topics.ha_status and message.payload.strip() == b"online":
            # one notice waits at a time: a flood of "online" must not bury the events behind it
            if not self._ha_online_queued.is_set():
                self._ha_online_queued.set()
                self._queue.put(("ha_online", None))

    # --- the publisher thread

    def _run(self) -> None:
        handlers = {
            "event": self._handle_event,
            "state": self._handle_state,
            "stats": self._handle_stats,
            "connected": self._handle_connected,
            "disconnected": self._handle_disconnected,
            "refused": self._handle_refused,
            "acked": self._handle_acked,
            "ha_online": self._handle_ha_online,
            "snapshot": self._handle_snapshot,
            "snapshot_dropped": self._handle_snapshot_dropped,
            "pictures_link": self._handle_pictures_link,
            "picture_acked": self._handle_picture_acked,
        }
        while True:
            try:
                kind, value = self._queue.get(timeout=self._until_due())
            except queue.Empty:
                kind, value = "discovery_due", None
            try:
                if self._discovery_due is not None and time.monotonic() >= self._discovery_due:
                    self._resend_discovery()
                if self._state_due is not None and time.monotonic() >= self._state_due:
                    self._state_due = None
                    self._handle_state(self._state)
                if kind == "discovery_due":
                    continue
                if kind == "stop":
                    return
                if kind != "close":
                    handlers[kind](value)
            except Exception as error:  # noqa: BLE001 - a bug: the daemon stops on it and ends its episode, which
                # this thread, alive, delivers (a thread dead of it left every later alert queued and never sent)
                report_fault(self._on_fault, error)
                if kind == "event":
                    self._keep(value)
            if kind == "close":  # also after a fault above: it reports its own and goes on, the outbox closed at last
                self._handle_close(value)
                return

    def _publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False):
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def _send_event(self, seq: int, payload: str) -> None:
        info = self._publish(self.topics.event, payload, qos=self.mqtt.qos)
        # paho keeps a QoS>0 message it could not send and resends it on reconnect: it is in flight
        self._inflight[info.mid] = seq

    def _handle_event(self, event: AlarmEvent) -> None:
        payload = event_payload(event, self.device.id, self.model)
        if event.kind == "end":
            self._last_end_wall = {event.event_id: event.wall_time}
        seq = self._outbox.add(event.event_id, event.kind, _json(payload))
        self.outbox_depth = len(self._outbox)
        if self.connected and self.outbox_fault != self._stats_sent_fault:
            self._send_stats()  # the disk just failed: say so now, not at the next stats
        self.last_event = payload  # only once it is on disk: readers take it as "accepted"
        if seq is None:
            log.warning("%s %s dropped: its start was dropped from the full outbox", payload["event_type"],
                        event.event_id)
        elif self.connected:
            self._send_event(seq, _json(payload))
        else:
            log.info("broker away: %s %s kept in the outbox (%d waiting)", payload["event_type"], event.event_id,
                     self.outbox_depth)

    def _keep(self, event: AlarmEvent) -> None:
        """After a fault while handling ``event``: into the outbox if it is not there yet, and out with what else waits.

        The daemon stops on the fault and ends the episode: a cry_start lost here was an OFF with no ON, and no alert.
        Stored and sent now, before that end (queued behind us), it goes out first, or with it from the outbox by the
        next run.
        """
        said = f"{EVENT_TYPES[event.kind]} {event.event_id}"
        try:
            if not any((e.event_id, e.kind) == (event.event_id, event.kind) for e in self._outbox.pending()):
                self._outbox.add(event.event_id, event.kind, _json(event_payload(event, self.device.id, self.model)))
                self.outbox_depth = len(self._outbox)
        except Exception as error:  # noqa: BLE001 - the fault itself is reported already; this says what it cost
            log.error("%s is lost: it could not be stored after the fault either (%s)", said, error_in_one_line(error))
            return
        try:
            if self.connected:
                self._send_waiting()
        except Exception as error:  # noqa: BLE001 - as above; stored, it goes at the next connect or the next run
            log.error("%s stays in the outbox, not sent: sending failed after the fault too (%s)", said,
                      error_in_one_line(error))

    def _send_waiting(self) -> None:
        """Send what the outbox holds that is not in flight, oldest first."""
        in_flight = set(self._inflight.values())
        backlog = [entry for entry in self._outbox.pending() if entry.seq not in in_flight]
        if backlog:
            log.info("delivering %d events from the outbox", len(backlog))
        for entry in backlog:
            self._send_event(entry.seq, entry.payload)

    def _said_statuses(self, state: AlarmState) -> dict[str, Any]:
        return {sense: self._held[sense].said if sense in self._held else status
                for sense, status in sense_statuses(state).items()}

    def _send_state(self, state: AlarmState) -> None:
        payload = state_payload(state, self.model)
        statuses = self._said_statuses(state)
        for sense, status in statuses.items():  # the held status, also in the periodic and the crying states
            payload[sense] = {**payload[sense], "status": status}
        self._publish(self.topics.state, _json(payload), qos=1, retain=True)
        # the first measured probability replaces the unmeasured one at once, not a state_interval later
        self._state_sent_at = time.monotonic() if math.isfinite(state.probability) else -math.inf
        self._state_sent_crying = state.crying
        if statuses != self._state_sent_statuses:
            self._state_sent_statuses, self._status_sent_at = statuses, time.monotonic()
        self._state_due = None
        self._wake_for_held_statuses()

    def _handle_state(self, state: AlarmState) -> None:
        now = time.monotonic()
        if not state.crying and state.since_wall is None:  # no episode yet this run: OFF since the last one known
            state = replace(state, since_wall=self._restart_state.since_wall)
        self._state = state
        self._held = hold_statuses(self._held, sense_statuses(state), now, self.status_hold)
        if not self.connected:
            return
        changed = state.crying != self._state_sent_crying
        if changed or now - self._state_sent_at >= self.mqtt.state_interval:
            self._send_state(state)
        elif self._said_statuses(state) != self._state_sent_statuses:
            if now - self._status_sent_at >= STATUS_INTERVAL:
                self._send_state(state)
            else:  # the newest state then, if its statuses still differ from those sent
                self._wake_at(self._status_sent_at + STATUS_INTERVAL)
        self._wake_for_held_statuses()

    def _wake_at(self, due: float) -> None:
        self._state_due = due if self._state_due is None else min(self._state_due, due)

    def _wake_for_held_statuses(self) -> None:
        """A status held back is said when due, should no new state come by then (a stream's end)."""
        held_back = [due for due in (held.due(self.status_hold) for held in self._held.values()) if due is not None]
        if held_back:
            self._wake_at(min(held_back))

    def _send_stats(self) -> None:
        fault = self.outbox_fault
        stats = {**self._stats, **self.picture_figures()}  # a slow link's dropped pictures are seen where HA looks
        self._publish(self.topics.stats, _json(stats_payload(stats, fault)), qos=0, retain=True)
        self._stats_sent_at = time.monotonic() if self._stats else -math.inf  # as for the state
        self._stats_sent_fault = fault
        self._stats_sent_source_state = self._stats.get("source_state")

    def _handle_stats(self, stats: dict) -> None:
        # the daemon may call publish_stats as often as it likes; the broker sees one every stats_interval,
        # and one at once when the outbox fails or the camera is lost or back
        self._stats = stats
        due = time.monotonic() - self._stats_sent_at >= self.mqtt.stats_interval
        changed = (self.outbox_fault != self._stats_sent_fault
                   or stats.get("source_state") != self._stats_sent_source_state)
        if self.connected and (due or changed):
            self._send_stats()

    def publish_snapshot(self, jpeg: bytes, event: AlarmEvent | None = None) -> None:
        """Queue a cry's picture (JPEG bytes) for the snapshot topic; returns at once."""
        self._queue.put(("snapshot", bytes(jpeg)))

    def snapshot_dropped(self) -> None:
        """A cry's picture that never reached the publisher (``edge.pictures.SnapshotWorker``: its encoder behind, or
        the picture failing): counted with those the broker never took, so the figure is every picture not sent."""
        self._queue.put(("snapshot_dropped", None))

    def _handle_snapshot_dropped(self, _) -> None:
        self.snapshots_dropped += 1

    def _handle_snapshot(self, jpeg: bytes) -> None:
        if self._snapshot_waiting is not None:
            self.snapshots_dropped += 1  # an older picture nobody received: the newest one stands for both
        self._snapshot_waiting = jpeg
        if not self.connected:
            log.info("broker away: the snapshot waits in memory (not on disk) and goes on reconnect")
        self._send_picture()

    def _send_picture(self) -> None:
        """The waiting picture, on the pictures' own connection, once no alert waits: every event the broker was
        sent acknowledged (so the alerts reach a subscriber first) and no earlier picture still on its way (at
        most one shares the link with the alerts; a newer one replaces the one waiting)."""
        if (self._snapshot_waiting is None or not self.connected or self._inflight or not self._pictures_connected
                or self._picture_in_flight is not None or self._pictures is None):
            return
        jpeg, self._snapshot_waiting = self._snapshot_waiting, None
        self._picture_in_flight = self._pictures.publish(self.topics.snapshot, jpeg, qos=1, retain=True).mid
        self.snapshots_sent += 1

    def _handle_pictures_link(self, refusal: str | None) -> None:
        """The pictures' connection up (None), lost (``"lost"``) or refused (the broker's reason)."""
        self._pictures_connected = refusal is None
        self._picture_in_flight = None  # paho sends it again itself on reconnect; it holds up nothing now
        if refusal is None:
            self._pictures_refusal_said = None
            self._send_picture()
        elif refusal != "lost" and refusal != self._pictures_refusal_said:
            self._pictures_refusal_said = refusal
            log.warning("%s refused the snapshots' own connection (%s); the alerts go on, the newest picture waits "
                        "in memory", self.where, refusal)

    def _handle_picture_acked(self, mid: int) -> None:
        if mid == self._picture_in_flight:
            self._picture_in_flight = None
            self._send_picture()

    def _send_discovery(self) -> None:
        self._discovery_due = None
        if self.mqtt.discovery:
            document = discovery_document(self.topics, self.device, self.model, self.hearing, self.snapshot,
                                          self.camera)
            self._publish(self.topics.discovery, _json(document), qos=1, retain=True)
            self._discovery_sent_at = time.monotonic()

    def _until_due(self) -> float | None:
        """Until the next debounced discovery or held-back state is due; None: nothing is."""
        due = [t for t in (self._discovery_due, self._state_due) if t is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _resend_discovery(self) -> None:
        if self.connected:
            log.info("Home Assistant came online: re-sending discovery")
            self._send_discovery()
            self._send_state(self._state or self._restart_state)
        self._discovery_due = None

    def _handle_connected(self, _) -> None:
        self.connected = True
        self._refusal_said = None
        log.info("%s to %s", "reconnected" if self._connected_once else "connected", self.where)
        self._connected_once = True
        # QoS 0: Home Assistant's birth message is QoS 0 anyway, and a message edge.inbound_limit drops unread must
        # leave the broker waiting for no acknowledgement
        self._client.subscribe(self.topics.ha_status, qos=0)
        self._send_discovery()
        # fresh retained state and diagnostics at once: not the ones a previous run left on the broker; and before
        # "online": Home Assistant shows the state it holds the moment the device is available, and a run that
        # died or stopped mid-cry while the broker was away left ON there, which would fire every "crying turned
        # on" automation for a moment
        self._send_state(self._state or self._restart_state)
        self._send_stats()
        self._publish(self.topics.availability, ONLINE, qos=1, retain=True)
        self._send_waiting()
        self._send_picture()  # once the broker has acknowledged those events: a picture never holds up an alert

    def _handle_disconnected(self, reason: str) -> None:
        if self.connected:
            log.warning("lost %s (%s); reconnecting, events go to the outbox", self.where, reason)
        self.connected = False

    def _handle_refused(self, reason: str) -> None:
        # said once for a run of the same refusal: also before any connection (a broker up after the Pi, refusing
        # the password), when it was not said at all while the events piled up in the outbox
        self.connected = False
        if self._retrying and reason != self._refusal_said:  # before, start() says it (BrokerError) or retries
            self._refusal_said = reason
            said = f": {reason}" if reason.startswith("TLS ") else f" refused the connection: {reason}"
            log.error("%s%s%s; retrying", self.where, said, self._refusal_hint(reason))

    def _handle_acked(self, mid: int) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is not None:
            self._outbox.remove(seq)
            self.outbox_depth = len(self._outbox)
            self._send_picture()

    def _handle_ha_online(self, _) -> None:
        """Re-send discovery at most once every ``discovery_interval``; the last request is always served."""
        self._ha_online_queued.clear()
        if self._discovery_due is None:
            self._discovery_due = max(time.monotonic(), self._discovery_sent_at + self.discovery_interval)

    def _handle_close(self, timeout: float) -> None:
        """What is queued into the outbox, the final OFF and offline, acknowledgements awaited, the outbox closed.

        Whatever fails on the way is reported (``report_fault``: the daemon exits 70) and the close goes on: a fault
        while handling one queued event (``_keep``s it) costs neither it nor what is queued after it, and one while
        saying goodbye leaves the unacknowledged events in the outbox for the next run, as a timeout does.
        """
        deadline = time.monotonic() + timeout
        try:
            self._drain()
            if self.connected:
                self._say_goodbye(deadline)
            self._say_undelivered()
        except Exception as error:  # noqa: BLE001 - each step guards its own; this is for what they did not foresee
            report_fault(self._on_fault, error)
        finally:
            self._outbox.close()

    def _say_goodbye(self, deadline: float) -> None:
        """The final OFF, ``offline``, the acknowledgements awaited until ``deadline``, disconnect; each step also
        after a fault in the one before it (reported): an ON is always followed by an OFF."""
        try:
            final = self._final_state()
        except Exception as error:  # noqa: BLE001 - reported; an OFF since now still ends what Home Assistant shows
            report_fault(self._on_fault, error)
            final = unmeasured_state(time.time())
        offline = None
        try:
            # always, an OFF already said too: it carried the last probability (0.38 an hour later), measured no
            # more by a stopped monitor; one OFF after a cry that was still running
            self._send_state(final)
            offline = self._publish(self.topics.availability, OFFLINE, qos=1, retain=True)
        except Exception as error:  # noqa: BLE001 - reported; what is in flight is still awaited
            report_fault(self._on_fault, error)
        while (self._inflight or (offline is not None and not offline.is_published())) and time.monotonic() < deadline:
            try:
                kind, value = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if kind in ("acked", "disconnected"):
                    getattr(self, f"_handle_{kind}")(value)
            except Exception as error:  # noqa: BLE001 - reported; an event not forgotten is sent again by the next run
                report_fault(self._on_fault, error)
            if not self.connected:
                break
        if offline is not None:
            self._client.disconnect()
        # else no clean goodbye: the broker then publishes the last will, offline, when the process ends

    def _say_undelivered(self) -> None:
        kept, kept_aside, lost = self._outbox.undelivered()
        if kept:  # also while the file cannot be written: what it holds the next run reads and delivers again
            log.warning("%d events not acknowledged by the broker stay in the outbox %s for the next run", kept,
                        self._outbox.path)
        if kept_aside:
            log.warning("%d events not acknowledged by the broker stay in %s for the next run (the outbox %s cannot be "
                        "written; the runtime directory is emptied by a reboot)", kept_aside, self._outbox.kept_in,
                        self._outbox.path)
        if lost:
            log.error("%d events not acknowledged by the broker were kept in memory only (the outbox %s cannot be "
                      "written) and are lost", lost, self._outbox.path)

    def _drain(self) -> None:
        """Handle what was queued after close() (paho's notices; an event the daemon sent late): each event into the
        outbox and out, also past a fault while handling one (reported, and the event ``_keep``-t)."""
        while True:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "state":
                    self._state = value  # the final state is sent once, by close
                elif kind in ("event", "acked", "connected", "disconnected", "refused", "snapshot"):
                    getattr(self, f"_handle_{kind}")(value)
            except Exception as error:  # noqa: BLE001 - a bug, reported: the daemon exits 70 once closed
                report_fault(self._on_fault, error)
                if kind == "event":
                    self._keep(value)

    def _final_state(self) -> AlarmState:
        """OFF, since the end of the last episode (or now), with no probability: nothing is measured any more."""
        state = self._state
        ended = self._last_end_wall.get(state.event_id) if state is not None and state.event_id else None
        if state is not None and not state.crying:
            ended = state.since_wall
        return unmeasured_state(ended if ended is not None else time.time())


def make_publisher(config: Config, model: str, on_output_closed=None, on_fault=None) -> MqttPublisher | StdoutPublisher:
    """The publisher the configuration asks for: MQTT when ``mqtt.host`` is set, else stdout.

    ``on_output_closed`` is called when stdout's reader has gone (stdout publisher only); ``on_fault(thread, error)``
    with an unexpected error on the publisher's threads (``report_fault``).
    """
    if config.mqtt.enabled:
        return MqttPublisher(config.mqtt, config.device, config.outbox, model, hearing=config.audio.enabled is True,
                             snapshot=config.snapshot.enabled, camera=config.source.type != "none", on_fault=on_fault)
    return StdoutPublisher(config.device.id, model, on_output_closed=on_output_closed, on_fault=on_fault)


def report_fault(on_fault, error: Exception) -> None:
    """An unexpected error (a bug) on a publisher's thread, which lives on to deliver what comes next (the end of
    the episode the daemon then ends): to ``on_fault(thread name, error)``, or without one logged (one line below
    -vv: edge.logs.OneLineErrors)."""
    thread = threading.current_thread().name
    if on_fault is not None:
        on_fault(thread, error)
        return
    log.error("unexpected error in thread %s", thread, exc_info=error)
